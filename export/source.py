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


class SourceUnavailable(Exception):
    """A source spec names a family this installation of cliprt cannot export."""


SOURCE_KINDS = {"open_clip": ("cliprt.export.open_clip_family", "from_open_clip"),
                "hf": ("cliprt.export.hf", "from_hf"),
                "st": ("cliprt.export.sentence_transformers", "from_sentence_transformers")}


def load_source(spec: str, checkpoint: Optional[str] = None, pretrained: Optional[str] = None) -> "ExportSource":
    """An `ExportSource` from a spec: ``open_clip:CONFIG`` (weights from ``checkpoint`` or the
    ``pretrained`` tag, else random init), ``hf:PATH`` or ``st:PATH``. Raises ValueError for
    a malformed spec, `SourceUnavailable` when the family's adapter is not installed."""
    import importlib

    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"source {spec!r} must be open_clip:CONFIG, hf:PATH or st:PATH")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r} in {spec!r} (expected open_clip:, hf: or st:)")
    if checkpoint and pretrained:
        raise ValueError("give a checkpoint or a pretrained tag, not both")
    if kind != "open_clip" and (checkpoint or pretrained):
        raise ValueError("--checkpoint/--pretrained apply to open_clip: sources only")
    mod_name, fn_name = SOURCE_KINDS[kind]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise SourceUnavailable(f"{kind}: sources are not available in this cliprt ({mod_name} is missing)") \
                from None
        raise
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise SourceUnavailable(f"{kind}: sources are not available in this cliprt ({mod_name}.{fn_name} is missing)")
    if kind == "open_clip":
        return fn(rest, checkpoint=checkpoint, pretrained=pretrained)
    return fn(rest)
