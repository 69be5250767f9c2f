"""The torch side: checkpoint loading, graph building (from the weights, or traced), weight sharing,
validation against shadow-peft.

Knows nothing about generation; imports torch, transformers, onnx and shadow-peft.
"""
