"""The torch side: checkpoint loading, graph tracing, weight sharing, validation against shadow-peft.

Knows nothing about generation; imports torch, transformers, onnx and shadow-peft.
"""
