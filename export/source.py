"""What a model family adapter hands to the export pipeline.

Each family (open_clip, Hugging Face CLIP/SigLIP, sentence-transformers) turns a user's model
into an `ExportSource`: the towers as eval-mode torch modules with the model's own
projection and L2-normalisation inside, the preprocessing and tokenisation specs for the
manifest, the tokenizer files to ship, and the reference preprocessing/tokenisation used to
verify parity. The pipeline (`cliprt.export.pipeline`) does the rest for every family alike.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from cliprt.models import ImageSpec, TextSpec


@dataclasses.dataclass
class ExportSource:
    name: str
    family: str                          # "open_clip", "hf-clip", "hf-siglip", "sentence-transformers"
    provenance: Dict[str, Any]           # source, config, checkpoint sha256, library versions
    embed_dim: int
    scoring: str                         # "softmax" (CLIP) or "sigmoid" (SigLIP); see cliprt.models
    logit_scale: float                   # exp() already applied: logits = scale * cos + bias
    logit_bias: float
    # image tower: float32 (B, 3, H, W), already normalised pixels -> float32 (B, D), L2-normalised
    image_tower: Optional[Any] = None
    image_spec: Optional[ImageSpec] = None
    # reference preprocessing: PIL image -> float32 (3, H, W) numpy (the family's own transform)
    preprocess: Optional[Callable[[Any], np.ndarray]] = None
    # text tower: int64 (B, L) named by text_inputs, in order -> float32 (B, D), L2-normalised
    text_tower: Optional[Any] = None
    text_inputs: Tuple[str, ...] = ("input_ids",)
    text_spec: Optional[TextSpec] = None
    # reference tokenizer: list of texts -> {input name: int64 (B, L)}
    tokenize: Optional[Callable[[List[str]], Dict[str, np.ndarray]]] = None
    # files to copy into the package: {name inside the package: source path}
    tokenizer_files: Dict[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""


def sha256_file(path: str) -> str:
    """Hex sha256 of a file (provenance of checkpoints, weights and tokenizer files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
