"""cliprt: a native-accelerated inference engine for CLIP-style dual-encoder models."""
from cliprt._core import ConflictError, FormatError, LockedError
from cliprt.index import Index, build_info

__all__ = ["Index", "FormatError", "LockedError", "ConflictError", "build_info", "Encoder", "ModelPackage", "ZeroShotClassifier", "Retriever",
           "Collection", "ImageError", "ingest", "IngestReport", "Client"]
__version__ = build_info()["version"]

# The encoder side needs onnxruntime, Pillow and tokenizers (the `encode` extra): imported on
# first use, so `import cliprt` stays light and works with the index alone.
_LAZY = {"Encoder": "cliprt.encode", "ModelPackage": "cliprt.models", "ZeroShotClassifier": "cliprt.zeroshot",
         "Retriever": "cliprt.retrieval", "Collection": "cliprt.collection", "ImageError": "cliprt.preprocess",
         "ingest": "cliprt.ingestion", "IngestReport": "cliprt.ingestion", "Client": "cliprt.serve.client"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cliprt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
