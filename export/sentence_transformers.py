"""sentence-transformers text embedding model -> ExportSource (text tower only).

``from_sentence_transformers(path)`` loads a *local* sentence-transformers directory
(modules.json: a BERT-like ``Transformer`` + ``Pooling`` [+ ``Normalize``]) on the CPU and
describes its text tower for the export pipeline. Nothing is downloaded.

The tower takes ``input_ids`` and ``attention_mask`` (int64, (B, L), L dynamic up to
``max_seq_length``) plus ``token_type_ids`` when the tokenizer emits them (BERT does; they
are all zero for a single sentence), runs the transformer, pools inside the graph (mean
over the tokens the attention mask keeps, as sentence-transformers' ``Pooling`` does, or
the CLS token) and L2-normalises. Because the pooling is masked, a batch need only be
padded to its longest sentence: ``TextSpec.dynamic_length=True``.

Scoring: a text-only embedding model has no contrastive temperature or bias; the score is
the cosine similarity of the normalised embeddings. The manifest says ``scoring="softmax"``
with ``logit_scale=1.0`` and ``logit_bias=0.0`` so that ``logits = 1.0 * cos``; softmax over
those is *not* a calibrated probability, rank by the cosine.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

from cliprt.models import TextSpec

from .hf import _tokenizer_json_lowercase
from .source import sha256_file
from .source import ExportSource

_POOLINGS = {"mean": "mean", "cls": "cls"}


def _module_kind(module) -> str:
    return type(module).__name__


def _pooling_mode(pool) -> str:
    mode = getattr(pool, "pooling_mode", None)
    if isinstance(mode, str):
        return mode
    cfg = pool.get_config_dict() if hasattr(pool, "get_config_dict") else {}
    if isinstance(cfg.get("pooling_mode"), str):
        return cfg["pooling_mode"]
    flags = {k: v for k, v in cfg.items() if k.startswith("pooling_mode_") and v}
    if list(flags) == ["pooling_mode_mean_tokens"]:
        return "mean"
    if list(flags) == ["pooling_mode_cls_token"]:
        return "cls"
    return ",".join(sorted(flags)) or "unknown"


def _tower_class():
    import torch
    import torch.nn.functional as F

    class TextTower(torch.nn.Module):
        """(input_ids, attention_mask[, token_type_ids]) int64 (B, L) -> L2-normalised (B, D)."""

        def __init__(self, transformer, pooling: str, with_token_types: bool):
            super().__init__()
            self.transformer = transformer
            self.pooling = pooling
            self.with_token_types = with_token_types

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.with_token_types:
                kwargs["token_type_ids"] = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
            out = self.transformer(**kwargs, return_dict=True)
            hidden = out.last_hidden_state
            if self.pooling == "cls":
                emb = hidden[:, 0]
            else:
                # masked mean without an int->float Cast in the graph (onnxconverter_common's fp16
                # conversion leaves a Cast(to=float) typed float16 and the model fails to load)
                keep = attention_mask.unsqueeze(-1) > 0
                zero = torch.zeros_like(hidden[:, :, :1])
                summed = torch.where(keep, hidden, zero).sum(dim=1)
                count = torch.where(keep, torch.ones_like(zero), zero).sum(dim=1)
                emb = summed / torch.clamp(count, min=1e-9)
            return F.normalize(emb, p=2, dim=-1)

    return TextTower


def from_sentence_transformers(path, name: Optional[str] = None,
                               token_type_ids: Optional[bool] = None) -> ExportSource:
    """ExportSource for a local sentence-transformers directory.

    ``token_type_ids``: include them as a tower input (default: when the tokenizer emits them)."""
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(os.path.join(path, "modules.json")):
        raise FileNotFoundError(f"{path!r} is not a sentence-transformers directory (no modules.json)")
    st = SentenceTransformer(path, device="cpu", local_files_only=True)
    st.eval()
    modules = list(st)
    kinds = [_module_kind(m) for m in modules]
    if not kinds or kinds[0] != "Transformer" or len(kinds) < 2 or kinds[1] != "Pooling" \
            or any(k != "Normalize" for k in kinds[2:]):
        raise ValueError(f"{path!r}: unsupported sentence-transformers pipeline {kinds} "
                         "(supported: Transformer, Pooling[, Normalize])")
    tmod, pool = modules[0], modules[1]
    mode = _pooling_mode(pool)
    if mode not in _POOLINGS:
        raise ValueError(f"{path!r}: pooling mode {mode!r} is not supported (supported: {sorted(_POOLINGS)})")
    if getattr(pool, "include_prompt", True) is False:
        raise ValueError(f"{path!r}: pooling with include_prompt=False is not supported")
    auto_model = getattr(tmod, "auto_model", None) or getattr(tmod, "model")
    auto_model = auto_model.float().eval()
    for p in auto_model.parameters():
        p.requires_grad_(False)
    tokenizer = tmod.tokenizer
    max_len = int(st.max_seq_length)

    # the tokenizer's own output names decide the inputs
    probe = tokenizer(["probe"], return_tensors="np")
    if token_type_ids is None:
        token_type_ids = "token_type_ids" in probe
    inputs = ("input_ids", "attention_mask") + (("token_type_ids",) if token_type_ids else ())

    tok_json = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(tok_json):
        raise FileNotFoundError(f"{path!r}: export needs tokenizer.json")
    with open(tok_json, "r", encoding="utf-8") as f:
        tj = json.load(f)
    model_kind = (tj.get("model") or {}).get("type")
    if model_kind != "WordPiece":
        raise ValueError(f"{tok_json}: expected a WordPiece tokenizer, got {model_kind!r}")
    lowercase = _tokenizer_json_lowercase(tj)
    pad_id = tokenizer.pad_token_id
    text_spec = TextSpec(tokenizer="wordpiece", tokenizer_file="tokenizer.json", context_length=max_len,
                         pad_id=int(pad_id if pad_id is not None else 0), pooling=_POOLINGS[mode],
                         lowercase=lowercase, clean="none", dynamic_length=True)
    tokenizer_files = {"tokenizer.json": tok_json}
    for extra in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if os.path.isfile(os.path.join(path, extra)):
            tokenizer_files[extra] = os.path.join(path, extra)

    def tokenize(texts: List[str]) -> Dict[str, np.ndarray]:
        # sentence-transformers' own tokenisation: pad to the longest, truncate at max_seq_length
        fn = getattr(st, "preprocess", None) or st.tokenize
        enc = fn(list(texts))
        return {k: np.asarray(enc[k].cpu().numpy() if hasattr(enc[k], "cpu") else enc[k], dtype=np.int64)
                for k in inputs}

    getdim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    embed_dim = int(getdim() or auto_model.config.hidden_size)

    weights = {}
    for wname in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, wname)):
            weights[wname] = sha256_file(os.path.join(path, wname))
            break
    provenance = {
        "source": "sentence-transformers",
        "path": path,
        "modules": kinds,
        "architecture": type(auto_model).__name__,
        "model_type": getattr(auto_model.config, "model_type", None),
        "pooling": mode,
        "normalize": "Normalize" in kinds,
        "weights_sha256": weights,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    TextTower = _tower_class()
    return ExportSource(
        name=name or os.path.basename(path.rstrip(os.sep)),
        family="sentence-transformers",
        provenance=provenance,
        embed_dim=embed_dim,
        scoring="softmax",
        logit_scale=1.0,
        logit_bias=0.0,
        text_tower=TextTower(auto_model, _POOLINGS[mode], bool(token_type_ids)).eval(),
        text_inputs=inputs,
        text_spec=text_spec,
        tokenize=tokenize,
        tokenizer_files=tokenizer_files,
        description=("sentence-transformers text embedding model (text tower only); no contrastive "
                     "temperature: the score is the cosine similarity (logit_scale 1.0, bias 0)"),
    )
