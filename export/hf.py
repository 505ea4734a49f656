"""Hugging Face transformers CLIP / SigLIP -> ExportSource.

``from_hf(path)`` loads a *local* directory saved with ``save_pretrained`` (config.json,
weights, preprocessor_config.json, tokenizer files) holding a ``CLIPModel`` or a
``SiglipModel`` (detected from ``config.json``'s ``model_type``) and describes it for the
export pipeline. Nothing is downloaded (``local_files_only=True``).

What the towers are (both eval-mode, float32, L2-normalised outputs):

* image: ``pixel_values`` float32 (B, 3, H, W), already normalised -> ``get_image_features``.
* text:  ``input_ids`` int64 (B, L) only -> ``get_text_features``.

  - CLIP's text encoder is causal and pools at the first end-of-text token (or the argmax
    id for legacy configs with ``eos_token_id == 2``), so the hidden state it pools never
    attends to the padding after it: the attention mask changes nothing at the pooled
    position. The tower therefore takes ``input_ids`` only; parity with the reference
    model *with* its attention mask is tested (tests/test_export_hf.py).
  - SigLIP was trained without an attention mask, padded to ``max_length`` (64), pooling
    the last position; the tower takes ``input_ids`` only, like the model's own usage.

Preprocessing (``preprocessor_config.json``):

* CLIPImageProcessor: resize the shortest edge to ``size.shortest_edge``, center crop to
  ``crop_size`` -> ``resize_mode="shortest"``.
* SiglipImageProcessor: squash (stretch) to ``size.height x size.width``, no crop ->
  ``resize_mode="squash"``. Mixing these up is the classic wrong-pixels bug.

Resample ints are PIL's (0 nearest, 2 bilinear, 3 bicubic); others are refused. Resizes
antialias (PIL and the torchvision backend both do for down-scaling).

Tokenisation: CLIP ships ``tokenizer.json`` (byte-level BPE, lowercasing normaliser), kind
``clip-bpe``, padded to ``max_position_embeddings`` (77). SigLIP's tokenizer is a
SentencePiece model (``spiece.model``) with a Python-side canonicalisation (lowercase if
``do_lower_case``, punctuation removed, whitespace collapsed) -> kind ``sentencepiece``,
``clean="canonicalize"``, padded to ``max_length`` 64. When the directory has no
``tokenizer.json`` (the usual SigLIP case), one is converted from ``spiece.model`` with
the T5 SentencePiece converter (needs ``sentencepiece`` and ``protobuf``) and shipped
beside ``spiece.model``.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np

from cliprt.models import ImageSpec, TextSpec

from .source import ExportSource, sha256_file

# PIL.Image.Resampling values -> cliprt interpolation names.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_RESAMPLE_NAMES = {1: "lanczos", 4: "box", 5: "hamming"}
_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


def _load_json(path: str) -> Dict[str, Any]:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def weights_provenance(path: str) -> Dict[str, str]:
    """sha256 of the weights file(s) in a transformers directory: {file name: sha256}."""
    out: Dict[str, str] = {}
    for name in _WEIGHT_FILES:
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            continue
        out[name] = sha256_file(f)
        if name.endswith(".index.json"):
            shards = sorted(set(_load_json(f).get("weight_map", {}).values()))
            for shard in shards:
                out[shard] = sha256_file(os.path.join(path, shard))
        break
    if not out:
        raise FileNotFoundError(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {path!r}")
    return out


def features(out) -> "torch.Tensor":  # noqa: F821
    """The projected embedding from get_*_features, whichever way the installed transformers
    returns it (a tensor in 4.x; a BaseModelOutputWithPooling with the projected
    ``pooler_output`` in 5.x)."""
    import torch
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out[1] if isinstance(out, (tuple, list)) else None
    if pooled is None:
        raise TypeError(f"cannot find the projected embedding in {type(out).__name__}")
    return pooled


def _towers():
    import torch
    import torch.nn.functional as F

    class ImageTower(torch.nn.Module):
        """pixel_values float32 (B, 3, H, W) -> L2-normalised image embedding (B, D)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return F.normalize(features(self.model.get_image_features(pixel_values=pixel_values)), dim=-1)

    class TextTower(torch.nn.Module):
        """input_ids int64 (B, L) -> L2-normalised text embedding (B, D)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return F.normalize(features(self.model.get_text_features(input_ids=input_ids)), dim=-1)

    return ImageTower, TextTower


def _hw(value, where: str):
    """An HF size field (int, {"height", "width"}, {"shortest_edge"}) -> (h, w) or int."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise ValueError(f"preprocessor_config.json: cannot read {where}={value!r} as a height/width")


def _interpolation(resample) -> str:
    if resample is None:
        raise ValueError("preprocessor_config.json has no resample")
    if isinstance(resample, str):
        name = resample.lower()
        if name in ("nearest", "bilinear", "bicubic"):
            return name
        raise ValueError(f"unsupported resample {resample!r}")
    r = int(resample)
    if r not in _RESAMPLE:
        raise ValueError(f"unsupported resample {r} ({_RESAMPLE_NAMES.get(r, 'unknown')}); "
                         f"cliprt supports {sorted(_RESAMPLE.values())}")
    return _RESAMPLE[r]


def _check_rescale(cfg: Dict[str, Any]) -> None:
    if not cfg.get("do_rescale", True) or abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ValueError("preprocessor_config.json: only do_rescale with rescale_factor 1/255 is supported")
    if not cfg.get("do_normalize", True):
        raise ValueError("preprocessor_config.json: do_normalize=false is not supported")
    if cfg.get("do_resize", True) is False:
        raise ValueError("preprocessor_config.json: do_resize=false is not supported")


def image_spec_from_config(cfg: Dict[str, Any], model_type: str) -> ImageSpec:
    """ImageSpec from a decoded preprocessor_config.json of a CLIP or SigLIP image processor."""
    _check_rescale(cfg)
    interp = _interpolation(cfg.get("resample", 3 if model_type == "clip" else 2))
    if model_type == "clip":
        if not cfg.get("do_center_crop", True):
            raise ValueError("preprocessor_config.json: CLIP without center crop is not supported")
        size = cfg.get("size", 224)
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise ValueError(f"preprocessor_config.json: CLIP size {size!r} has no shortest_edge")
            resize = int(size["shortest_edge"])
        else:
            resize = int(size)
        crop = _hw(cfg.get("crop_size", resize), "crop_size")
        mean = tuple(cfg.get("image_mean", _OPENAI_CLIP_MEAN))
        std = tuple(cfg.get("image_std", _OPENAI_CLIP_STD))
        return ImageSpec(size=crop, resize_mode="shortest", resize_size=resize, interpolation=interp,
                         antialias=True, mean=mean, std=std)
    if model_type == "siglip":
        hw = _hw(cfg.get("size", {"height": 224, "width": 224}), "size")
        mean = tuple(cfg.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(cfg.get("image_std", (0.5, 0.5, 0.5)))
        return ImageSpec(size=hw, resize_mode="squash", resize_size=max(hw), interpolation=interp,
                         antialias=True, mean=mean, std=std)
    raise ValueError(f"unsupported model_type {model_type!r}")


def _tokenizer_json_lowercase(tok_json: Dict[str, Any]) -> bool:
    """True when the tokenizer.json normaliser lowercases (Lowercase, or BertNormalizer)."""
    def walk(n) -> bool:
        if not isinstance(n, dict):
            return False
        t = n.get("type")
        if t == "Lowercase":
            return True
        if t == "BertNormalizer":
            return bool(n.get("lowercase", False))
        if t == "Sequence":
            return any(walk(c) for c in n.get("normalizers", []))
        return False
    return walk(tok_json.get("normalizer"))


def _siglip_tokenizer_json(tokenizer) -> str:
    """Converts a slow SiglipTokenizer (spiece.model) to tokenizer.json in a temp directory.

    SigLIP's SentencePiece model is T5-like (no extra ids): Metaspace pre-tokenisation and
    ``</s>`` appended. The Python-side canonicalisation (lowercase, punctuation removed,
    whitespace collapsed) is *not* in tokenizer.json; the manifest says ``clean="canonicalize"``."""
    from transformers.convert_slow_tokenizer import T5Converter

    class SiglipConverter(T5Converter):
        def vocab(self, proto):
            return [(piece.piece, piece.score) for piece in proto.pieces]

    fast = SiglipConverter(tokenizer).converted()
    out_dir = tempfile.mkdtemp(prefix="cliprt-siglip-tok-")
    out = os.path.join(out_dir, "tokenizer.json")
    fast.save(out)
    return out


def from_hf(path, name: Optional[str] = None) -> ExportSource:
    """ExportSource for a local transformers directory holding a CLIPModel or SiglipModel."""
    import torch
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    path = os.path.abspath(os.fspath(path))
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"no config.json in {path!r}")
    model_type = _load_json(cfg_path).get("model_type")
    if model_type == "clip":
        from transformers import CLIPModel as Model
    elif model_type == "siglip":
        from transformers import SiglipModel as Model
    else:
        raise ValueError(f"{path!r}: model_type {model_type!r} is not supported by from_hf "
                         "(expected 'clip' or 'siglip')")

    model = Model.from_pretrained(path, local_files_only=True).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    config = model.config

    # --- image ---------------------------------------------------------------------------
    pp_path = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(pp_path):
        raise FileNotFoundError(f"no preprocessor_config.json in {path!r}")
    image_spec = image_spec_from_config(_load_json(pp_path), model_type)
    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)

    def preprocess(img) -> np.ndarray:
        pv = processor(images=img, return_tensors="pt")["pixel_values"][0]
        return pv.detach().cpu().numpy().astype(np.float32)

    # --- text ----------------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer_files: Dict[str, str] = {}
    tok_json = os.path.join(path, "tokenizer.json")
    if model_type == "clip":
        if not os.path.isfile(tok_json):
            raise FileNotFoundError(f"{path!r}: CLIP export needs tokenizer.json")
        context = int(config.text_config.max_position_embeddings)
        padding = "max_length"
        kind, pooling, clean = "clip-bpe", "eot", "none"
        tj = _load_json(tok_json)
        if (tj.get("model") or {}).get("type") != "BPE":
            raise ValueError(f"{tok_json}: expected a BPE tokenizer, got {(tj.get('model') or {}).get('type')!r}")
        lowercase = _tokenizer_json_lowercase(tj)
    else:
        # SigLIP: trained with padding="max_length" to 64 (= max_position_embeddings).
        context = int(config.text_config.max_position_embeddings)
        padding = "max_length"
        kind, pooling, clean = "sentencepiece", "last", "canonicalize"
        lowercase = bool(getattr(tokenizer, "do_lower_case", True))
        if not os.path.isfile(tok_json):
            tok_json = _siglip_tokenizer_json(tokenizer)
        spm = os.path.join(path, "spiece.model")
        if os.path.isfile(spm):
            tokenizer_files["spiece.model"] = spm
    tokenizer_files["tokenizer.json"] = tok_json
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        if os.path.isfile(os.path.join(path, extra)):
            tokenizer_files[extra] = os.path.join(path, extra)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(config.text_config, "pad_token_id", None) or 0
    text_spec = TextSpec(tokenizer=kind, tokenizer_file="tokenizer.json", context_length=context,
                         pad_id=int(pad_id), pooling=pooling, lowercase=lowercase, clean=clean,
                         dynamic_length=False)

    def tokenize(texts: List[str]) -> Dict[str, np.ndarray]:
        enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=context,
                        return_tensors="np")
        return {"input_ids": np.asarray(enc["input_ids"], dtype=np.int64)}

    # --- scoring -------------------------------------------------------------------------
    with torch.no_grad():
        logit_scale = float(model.logit_scale.exp().item())
        logit_bias = float(model.logit_bias.item()) if model_type == "siglip" else 0.0
    if model_type == "clip":
        embed_dim = int(config.projection_dim)
    else:
        embed_dim = int(config.text_config.hidden_size)

    ImageTower, TextTower = _towers()
    provenance = {
        "source": "transformers",
        "path": path,
        "model_type": model_type,
        "architecture": type(model).__name__,
        "weights_sha256": weights_provenance(path),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "image_processor": type(processor).__name__,
        "tokenizer": type(tokenizer).__name__,
    }
    family = "hf-clip" if model_type == "clip" else "hf-siglip"
    desc = ("Hugging Face CLIPModel: softmax scoring (logit_scale.exp() * cos)" if model_type == "clip"
            else "Hugging Face SiglipModel: sigmoid scoring (logit_scale.exp() * cos + logit_bias)")
    return ExportSource(
        name=name or os.path.basename(path.rstrip(os.sep)),
        family=family,
        provenance=provenance,
        embed_dim=embed_dim,
        scoring="softmax" if model_type == "clip" else "sigmoid",
        logit_scale=logit_scale,
        logit_bias=logit_bias,
        image_tower=ImageTower(model).eval(),
        image_spec=image_spec,
        preprocess=preprocess,
        text_tower=TextTower(model).eval(),
        text_inputs=("input_ids",),
        text_spec=text_spec,
        tokenize=tokenize,
        tokenizer_files=tokenizer_files,
        description=desc,
    )
