"""The torch-free tools over bundles (ONNX graphs and their weights): quantization
(quantize*.py), the shared weights file (weights.py), ORT-format and onnxruntime-genai packaging
(mobile.py), evaluation against another bundle (evaluate.py), and staging an output folder so
that it is never left half-written (staging.py).

Imports onnx, onnxruntime and numpy, never torch or transformers; only evaluate() against a
PyTorch checkpoint and export --quantize reach into exporters/ (lazily, for that call alone).
"""
