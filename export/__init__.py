"""cliprt.export: trained PyTorch models -> ONNX -> TensorRT model packages, verified for parity.

Installed as the subpackage ``cliprt.export`` (source: the top-level ``export/`` folder).
Needs the ``export`` extra (torch, open_clip, transformers, onnx, onnxruntime); the rest of
cliprt never imports it.
"""
