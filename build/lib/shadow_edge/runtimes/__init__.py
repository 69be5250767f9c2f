"""The device side: runs bundles with onnxruntime. Imports numpy, onnxruntime and tokenizers only,
never torch or transformers, and works on token ids (the tokenizer is optional)."""
