"""Model packages: a directory holding a model's towers, tokenizer and a manifest that says
exactly how to feed it (pixels, tokens) and how to score its embeddings.

Layout::

    manifest.json      format, provenance, embedding, scoring, image and text specs, towers
    image.onnx         image tower: float32 (batch, 3, H, W) -> float32 (batch, dim)
    text.onnx          text tower:  int64 (batch, seq) [+ attention mask] -> float32 (batch, dim)
    tokenizer.json     tokenizer (Hugging Face `tokenizers` format)
    engines/           TensorRT engine cache (keyed by GPU, TensorRT version, precision, profile)

`ModelPackage.load(dir)` validates everything it reads and raises `PackageError` (a
`ValueError`) naming the file and the field; it never imports torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Tuple

FORMAT = "cliprt-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

RESIZE_MODES = ("shortest", "squash")        # shortest side + center crop | stretch to size
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
SCORINGS = ("softmax", "sigmoid")            # CLIP-style contrastive | SigLIP-style pairwise
TOKENIZER_KINDS = ("clip-bpe", "wordpiece", "sentencepiece")
POOLINGS = ("eot", "cls", "mean", "last")     # which token(s) feed the pooled text output
PRECISIONS = ("fp32", "fp16", "int8")
TOWERS = ("image", "text")


class PackageError(ValueError):
    """A model package that is missing, incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    size: Tuple[int, int]                 # (height, width) fed to the tower
    resize_mode: str                      # "shortest" (+ center crop) or "squash"
    resize_size: int                      # shortest-side target before the crop ("shortest")
    interpolation: str
    antialias: bool
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    channel_order: str = "RGB"
    layout: str = "NCHW"


@dataclasses.dataclass(frozen=True)
class TextSpec:
    tokenizer: str                        # kind, one of TOKENIZER_KINDS
    tokenizer_file: str                   # relative to the package directory
    context_length: int
    pad_id: int
    pooling: str                          # one of POOLINGS
    lowercase: bool
    clean: str = "none"                   # text cleaning applied before tokenising
    dynamic_length: bool = False          # the text tower accepts sequences shorter than context


@dataclasses.dataclass(frozen=True)
class TowerSpec:
    file: str                             # ONNX file, relative to the package directory
    precisions: Tuple[str, ...]           # variants available ("fp32" always)
    inputs: Tuple[str, ...]
    output: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    family: str
    embed_dim: int
    normalized: bool                      # towers output L2-normalised embeddings
    scoring: str
    logit_scale: float
    logit_bias: float
    provenance: Dict[str, Any]
    towers: Dict[str, TowerSpec]
    image: Optional[ImageSpec]
    text: Optional[TextSpec]
    description: str = ""

    def to_json(self) -> Dict[str, Any]:
        out = {"format": FORMAT, "format_version": FORMAT_VERSION}
        out.update(dataclasses.asdict(self))
        return out


def _err(path: str, msg: str) -> PackageError:
    return PackageError(f"invalid model package {path!r}: {msg}")


def _field(d: Dict[str, Any], key: str, types, where: str, path: str):
    if key not in d:
        raise _err(path, f"{where}.{key} is missing")
    value = d[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _err(path, f"{where}.{key} must be {types}, got bool")
    if not isinstance(value, types):
        raise _err(path, f"{where}.{key} has type {type(value).__name__}")
    return value


def _choice(value: str, allowed, where: str, path: str) -> str:
    if value not in allowed:
        raise _err(path, f"{where} is {value!r}, expected one of {allowed}")
    return value


def _triple(value, where: str, path: str) -> Tuple[float, float, float]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
        raise _err(path, f"{where} must be a list of 3 numbers")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _image_spec(d: Dict[str, Any], path: str) -> ImageSpec:
    w = "image"
    size = _field(d, "size", list, w, path)
    if not (len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise _err(path, "image.size must be [height, width] positive integers")
    std = _triple(_field(d, "std", list, w, path), "image.std", path)
    if any(v <= 0 for v in std):
        raise _err(path, "image.std must be positive")
    spec = ImageSpec(
        size=(size[0], size[1]),
        resize_mode=_choice(_field(d, "resize_mode", str, w, path), RESIZE_MODES, "image.resize_mode", path),
        resize_size=_field(d, "resize_size", int, w, path),
        interpolation=_choice(_field(d, "interpolation", str, w, path), INTERPOLATIONS, "image.interpolation", path),
        antialias=_field(d, "antialias", bool, w, path),
        mean=_triple(_field(d, "mean", list, w, path), "image.mean", path),
        std=std,
        channel_order=_choice(d.get("channel_order", "RGB"), ("RGB", "BGR"), "image.channel_order", path),
        layout=_choice(d.get("layout", "NCHW"), ("NCHW",), "image.layout", path),
    )
    if spec.resize_mode == "shortest" and spec.resize_size < min(spec.size):
        raise _err(path, "image.resize_size is smaller than the crop")
    return spec


def _text_spec(d: Dict[str, Any], path: str) -> TextSpec:
    w = "text"
    spec = TextSpec(
        tokenizer=_choice(_field(d, "tokenizer", str, w, path), TOKENIZER_KINDS, "text.tokenizer", path),
        tokenizer_file=_field(d, "tokenizer_file", str, w, path),
        context_length=_field(d, "context_length", int, w, path),
        pad_id=_field(d, "pad_id", int, w, path),
        pooling=_choice(_field(d, "pooling", str, w, path), POOLINGS, "text.pooling", path),
        lowercase=_field(d, "lowercase", bool, w, path),
        clean=d.get("clean", "none"),
        dynamic_length=bool(d.get("dynamic_length", False)),
    )
    if spec.context_length <= 0:
        raise _err(path, "text.context_length must be positive")
    return spec


def _tower_spec(name: str, d: Dict[str, Any], path: str) -> TowerSpec:
    w = f"towers.{name}"
    precisions = _field(d, "precisions", list, w, path)
    for p in precisions:
        _choice(p, PRECISIONS, f"{w}.precisions", path)
    if "fp32" not in precisions:
        raise _err(path, f"{w}.precisions must include fp32")
    inputs = _field(d, "inputs", list, w, path)
    if not inputs or not all(isinstance(i, str) for i in inputs):
        raise _err(path, f"{w}.inputs must be a non-empty list of names")
    return TowerSpec(file=_field(d, "file", str, w, path), precisions=tuple(precisions),
                     inputs=tuple(inputs), output=_field(d, "output", str, w, path))


def parse_manifest(data: Any, path: str = "<memory>") -> Manifest:
    """Validates a decoded manifest.json; raises PackageError naming the field."""
    if not isinstance(data, dict):
        raise _err(path, "manifest.json must hold a JSON object")
    if data.get("format") != FORMAT:
        raise _err(path, f"format is {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise _err(path, f"unsupported format_version {version!r} (this cliprt reads {FORMAT_VERSION})")
    towers_raw = _field(data, "towers", dict, "manifest", path)
    if not towers_raw or not set(towers_raw) <= set(TOWERS):
        raise _err(path, f"towers must name one or both of {TOWERS}, got {sorted(towers_raw)}")
    towers = {name: _tower_spec(name, t, path) for name, t in towers_raw.items()}
    image = _image_spec(_field(data, "image", dict, "manifest", path), path) if "image" in towers else None
    text = _text_spec(_field(data, "text", dict, "manifest", path), path) if "text" in towers else None
    dim = _field(data, "embed_dim", int, "manifest", path)
    if dim <= 0:
        raise _err(path, "embed_dim must be positive")
    return Manifest(
        name=_field(data, "name", str, "manifest", path),
        family=_field(data, "family", str, "manifest", path),
        embed_dim=dim,
        normalized=_field(data, "normalized", bool, "manifest", path),
        scoring=_choice(_field(data, "scoring", str, "manifest", path), SCORINGS, "scoring", path),
        logit_scale=float(_field(data, "logit_scale", (int, float), "manifest", path)),
        logit_bias=float(_field(data, "logit_bias", (int, float), "manifest", path)),
        provenance=_field(data, "provenance", dict, "manifest", path),
        towers=towers,
        image=image,
        text=text,
        description=data.get("description", ""),
    )


class ModelPackage:
    """A validated model package directory."""

    def __init__(self, path: str, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def load(cls, path) -> "ModelPackage":
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no model package at {path!r}")
        mpath = os.path.join(path, MANIFEST)
        if not os.path.isfile(mpath):
            raise _err(path, f"{MANIFEST} is missing")
        try:
            with open(mpath, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _err(path, f"{MANIFEST} is not valid JSON ({e})") from None
        manifest = parse_manifest(data, path)
        needed: List[str] = []
        for spec in manifest.towers.values():
            needed += [variant_file(spec.file, p) for p in spec.precisions]
        if manifest.text is not None:
            needed.append(manifest.text.tokenizer_file)
        for rel in needed:
            if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
                raise _err(path, f"file {rel!r} must be a path inside the package")
            if not os.path.isfile(os.path.join(path, rel)):
                raise _err(path, f"file {rel!r} named by the manifest is missing")
        return cls(path, manifest)

    def file(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def tower_file(self, tower: str, precision: str = "fp32") -> str:
        """Path of a tower's ONNX file at a precision (fp16/int8 variants sit beside the fp32
        file as NAME.fp16.onnx, NAME.int8.onnx)."""
        spec = self.manifest.towers.get(tower)
        if spec is None:
            raise KeyError(f"package {self.manifest.name!r} has no {tower} tower")
        if precision not in spec.precisions:
            raise ValueError(f"{tower} tower has no {precision} variant (available: {', '.join(spec.precisions)})")
        return self.file(variant_file(spec.file, precision))

    def save_manifest(self) -> None:
        write_manifest(self.path, self.manifest)


def variant_file(fp32_file: str, precision: str) -> str:
    """File name of a tower variant: the fp32 file itself, or NAME.<precision>.onnx."""
    if precision == "fp32":
        return fp32_file
    stem, ext = os.path.splitext(fp32_file)
    return f"{stem}.{precision}{ext}"


def write_manifest(path: str, manifest: Manifest) -> None:
    """Writes manifest.json atomically (temp file + rename)."""
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(path, MANIFEST))
