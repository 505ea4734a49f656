"""cliprt: a native-accelerated inference engine for CLIP-style dual-encoder models."""
from cliprt._core import FormatError
from cliprt.index import Index, build_info

__all__ = ["Index", "FormatError", "build_info"]
__version__ = build_info()["version"]
