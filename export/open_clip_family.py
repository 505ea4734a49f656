"""open_clip models (CLIP ViT/ResNet, MobileCLIP, SigLIP configs, ...) as an ExportSource.

    src = from_open_clip("ViT-B-32", checkpoint="model.pt")     # or pretrained="laion2b_s34b_b79k"
    export_package(src, "packages/vit-b-32", precisions=("fp32", "int8"))

Without a checkpoint or a pretrained tag the model is randomly initialised (seeded with
`seed`), which is only useful for tests; provenance records it as "random-init".
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cliprt.models import ImageSpec, TextSpec

from .pipeline import ExportError
from .source import ExportSource, sha256_file

# open_clip text pool_type -> manifest pooling
_POOLING = {"argmax": "eot", "eos": "eot", "last": "last", "first": "cls"}
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


class OpenClipError(ExportError):
    """The open_clip config cannot be exported as asked."""


def _wrappers():
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model.encode_image(pixels, normalize=True)

    class TextTower(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model.encode_text(input_ids, normalize=True)

    class CausalTextTower(torch.nn.Module):
        """open_clip's text tower run to the length of the given ids instead of always
        `context_length`: the same computation as `encode_text` with the positional embedding
        and the causal mask cut to the sequence length. Every position attends only to
        itself and earlier positions and the output is pooled at the end token, so columns
        after the batch's longest caption cannot change the result."""

        def __init__(self, model, text):
            super().__init__()
            self.model = model
            self.text = text
            self.pool_type = getattr(text, "text_pool_type", None) or getattr(text, "pool_type")
            self.eos_id = getattr(text, "text_eos_id", None) or getattr(text, "eos_id", None)

        def forward(self, input_ids):
            from open_clip.transformer import text_global_pool

            t = self.text
            cast_dtype = t.transformer.get_cast_dtype()
            # Positions and the causal mask are derived from the ids tensor itself (not sliced
            # to a Python length), so the traced graph keeps the sequence axis symbolic.
            positions = torch.cumsum(torch.ones_like(input_ids), dim=1) - 1
            x = t.token_embedding(input_ids).to(cast_dtype)
            x = x + t.positional_embedding[positions].to(cast_dtype)
            row = positions[0]
            mask = torch.where(row[None, :] > row[:, None], t.attn_mask[0, -1], t.attn_mask[-1, 0]).to(cast_dtype)
            for block in t.transformer.resblocks:
                x = _residual_block(block, x, mask)
            x = t.ln_final(x)
            x = text_global_pool(x, input_ids, self.pool_type, eos_token_id=self.eos_id)
            if t.text_projection is not None:
                x = t.text_projection(x) if isinstance(t.text_projection, torch.nn.Linear) else x @ t.text_projection
            return torch.nn.functional.normalize(x, dim=-1)

    def _residual_block(block, x, mask):
        """open_clip's ResidualAttentionBlock (self-attention, batch first) written with
        reshapes that name no sequence length: nn.MultiheadAttention's Python code makes the
        ONNX tracer freeze the traced sequence length into a Reshape."""
        attn = block.attn
        y = block.ln_1(x)
        qkv = torch.nn.functional.linear(y, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = attn.out_proj(o.transpose(1, 2).flatten(2))
        x = x + block.ls_1(o)
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    return ImageTower, TextTower, CausalTextTower


def _plain_self_attention_block(block) -> bool:
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    return (type(block) is ResidualAttentionBlock and type(attn) is torch.nn.MultiheadAttention
            and attn.batch_first and attn._qkv_same_embed_dim and attn.bias_k is None
            and not attn.add_zero_attn and not hasattr(block, "ln_1_kv"))


def causal_text_module(model):
    """The module holding open_clip's causal text transformer when the text tower can run to
    the batch's longest caption (causal mask, pooled at the end token, no class token or pad
    mask); None otherwise (e.g. MobileCLIP's bidirectional text encoder)."""
    text = getattr(model, "text", None)
    text = model if text is None else text
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(hasattr(text, a) for a in needed) or getattr(text, "attn_mask", None) is None:
        return None
    if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
        return None
    if getattr(text, "output_tokens", False):
        return None
    pool = getattr(text, "text_pool_type", None) or getattr(text, "pool_type", None)
    if pool not in ("argmax", "eos"):
        return None
    if type(model).encode_text.__qualname__ not in ("CLIP.encode_text", "CustomTextCLIP.encode_text"):
        return None
    blocks = getattr(text.transformer, "resblocks", None)
    if blocks is None or not getattr(text.transformer, "batch_first", True):
        return None
    if not all(_plain_self_attention_block(b) for b in blocks):
        return None
    return text


def tag_preprocess(config: str) -> Dict[str, Any]:
    """The preprocessing every pretrained tag of this config agrees on (used when the weights
    come from a file or are random: open_clip only knows a tag's mean/std/resize mode)."""
    import open_clip

    keys = ("mean", "std", "interpolation", "resize_mode")
    agreed: Optional[Dict[str, Any]] = None
    for tag in open_clip.list_pretrained_tags_by_model(config):
        cfg = open_clip.get_pretrained_cfg(config, tag)
        vals = {k: (tuple(cfg[k]) if isinstance(cfg.get(k), (list, tuple)) else cfg.get(k)) for k in keys}
        vals = {k: v for k, v in vals.items() if v is not None}
        if agreed is None:
            agreed = vals
        else:
            agreed = {k: v for k, v in agreed.items() if vals.get(k) == v}
    return agreed or {}


def _image_spec(pp: Dict[str, Any]) -> ImageSpec:
    size = pp["size"]
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise OpenClipError(f"open_clip resize_mode {mode!r} is not supported by cliprt packages "
                            "(supported: 'shortest' + center crop, 'squash')")
    if mode == "shortest" and size[0] != size[1]:
        raise OpenClipError(f"resize_mode 'shortest' with a non-square size {size} is not supported")
    interp = pp.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear", "nearest"):
        raise OpenClipError(f"interpolation {interp!r} is not supported")
    return ImageSpec(size=size, resize_mode=mode, resize_size=min(size), interpolation=interp,
                     antialias=True,  # torchvision Resize on PIL images always antialiases
                     mean=tuple(float(v) for v in pp["mean"]), std=tuple(float(v) for v in pp["std"]))


def from_open_clip(config: str, checkpoint: Optional[str] = None, pretrained: Optional[str] = None, *,
                   seed: Optional[int] = 0, towers: Sequence[str] = ("image", "text"),
                   reparameterize: bool = True, dynamic_text: bool = True) -> ExportSource:
    """ExportSource for an open_clip config. `checkpoint`: a local weights file; `pretrained`:
    an open_clip tag (downloads); neither: random init seeded with `seed`. `towers` selects
    which towers to export (e.g. ("image",) for SigLIP configs whose tokenizer cliprt cannot
    ship). `dynamic_text`: export a causal text tower with a dynamic sequence axis, so the
    runtime feeds each batch only up to its longest caption (towers that are not causal, such
    as MobileCLIP's, always take `context_length` tokens)."""
    try:
        import open_clip
        import torch
        from open_clip.transform import PreprocessCfg, image_transform_v2
    except ImportError as e:
        raise ImportError(f"exporting open_clip models needs the 'export' extra "
                          f"(pip install 'cliprt[export]'): {e}") from e
    if checkpoint is not None and pretrained is not None:
        raise ValueError("give either checkpoint= or pretrained=, not both")
    towers = tuple(towers)
    if not towers or not set(towers) <= {"image", "text"}:
        raise ValueError(f"towers must be a non-empty subset of ('image', 'text'), got {towers}")
    model_cfg = open_clip.get_model_config(config) if not config.startswith(("hf-hub:", "local-dir:")) else None
    if model_cfg is None and not config.startswith(("hf-hub:", "local-dir:")):
        raise OpenClipError(f"unknown open_clip config {config!r} (see open_clip.list_models())")
    text_cfg = (model_cfg or {}).get("text_cfg", {})

    tokenizer = None
    if "text" in towers:
        if text_cfg.get("hf_tokenizer_name") or "siglip" in config.lower() or model_cfg is None:
            raise OpenClipError(
                f"open_clip config {config!r} uses a Hugging Face tokenizer "
                f"({text_cfg.get('hf_tokenizer_name') or 'SigLIP/hub'}), which needs a hub download and is "
                "not supported by the open_clip exporter; export its image tower only "
                "(towers=('image',)) or use the hf: source for SigLIP models")
        tokenizer = open_clip.get_tokenizer(config)
        if not isinstance(tokenizer, open_clip.SimpleTokenizer):
            raise OpenClipError(f"open_clip config {config!r} uses {type(tokenizer).__name__}; only the CLIP BPE "
                                "tokenizer (SimpleTokenizer) is supported")

    provenance: Dict[str, Any] = {"source": f"open_clip:{config}", "config": config,
                                  "open_clip": open_clip.__version__}
    kwargs: Dict[str, Any] = {}
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
        provenance.update(weights="checkpoint", checkpoint=os.path.basename(checkpoint),
                          checkpoint_sha256=sha256_file(checkpoint))
        kwargs["pretrained"] = checkpoint
    elif pretrained is not None:
        provenance.update(weights="pretrained", pretrained=pretrained)
        kwargs["pretrained"] = pretrained
    else:
        provenance.update(weights="random-init", seed=seed)
    pp_override = {} if pretrained is not None else tag_preprocess(config) if model_cfg is not None else {}
    if pp_override:
        kwargs["force_preprocess_cfg"] = pp_override
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = open_clip.create_model(config, **kwargs)
    except RuntimeError as e:
        if pretrained is not None:
            raise OpenClipError(f"could not load open_clip pretrained weights {config}/{pretrained}: {e}") from e
        raise
    model.eval()
    if pretrained is not None and "checkpoint_sha256" not in provenance:
        pcfg = open_clip.get_pretrained_cfg(config, pretrained) or {}
        if pcfg.get("hf_hub") or pcfg.get("url"):
            provenance["pretrained_source"] = pcfg.get("hf_hub") or pcfg.get("url")
    if reparameterize and ("mobileclip" in config.lower()
                           or any(hasattr(m, "reparameterize") for m in model.modules())):
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model)
        model.eval()
        provenance["reparameterized"] = True

    pp = open_clip.get_model_preprocess_cfg(model)
    pp_cfg = PreprocessCfg(**{k: v for k, v in pp.items() if k in PreprocessCfg.__dataclass_fields__})
    transform = image_transform_v2(pp_cfg, is_train=False)

    def preprocess(image) -> np.ndarray:
        return transform(image).numpy().astype(np.float32)

    logit_scale = float(model.logit_scale.exp().item())
    bias = getattr(model, "logit_bias", None)
    sigmoid = bias is not None
    ImageTower, TextTower, CausalTextTower = _wrappers()
    embed_dim = int((model_cfg or {}).get("embed_dim") or 0)

    src = ExportSource(
        name=config, family="open_clip", provenance=provenance, embed_dim=embed_dim,
        scoring="sigmoid" if sigmoid else "softmax", logit_scale=logit_scale,
        logit_bias=float(bias.item()) if sigmoid else 0.0,
        description=f"open_clip {config} ({provenance['weights']})")

    if "image" in towers:
        src.image_tower = ImageTower(model).eval()
        src.image_spec = _image_spec(pp)
        src.preprocess = preprocess
    if "text" in towers:
        pool_type = text_cfg.get("pool_type", "argmax")
        if pool_type not in _POOLING:
            raise OpenClipError(f"text pool_type {pool_type!r} has no cliprt pooling equivalent")
        context_length = int(getattr(model, "context_length", 0) or text_cfg.get("context_length", 77))
        causal = causal_text_module(model) if dynamic_text else None
        src.text_tower = (TextTower(model) if causal is None else CausalTextTower(model, causal)).eval()
        src.text_inputs = ("input_ids",)
        clean = text_cfg.get("tokenizer_kwargs", {}).get("clean", "lower")
        src.text_spec = TextSpec(tokenizer="clip-bpe", tokenizer_file=BPE_FILE, context_length=context_length,
                                 pad_id=0, pooling=_POOLING[pool_type], lowercase=clean == "lower",
                                 clean=f"ftfy+whitespace+{clean}", dynamic_length=causal is not None)
        bpe = os.path.join(os.path.dirname(open_clip.__file__), BPE_FILE)
        src.tokenizer_files = {BPE_FILE: bpe}
        tok = open_clip.get_tokenizer(config, context_length=context_length)

        def tokenize(texts: List[str]) -> Dict[str, np.ndarray]:
            return {"input_ids": tok(list(texts)).numpy().astype(np.int64)}

        src.tokenize = tokenize
        provenance["tokenizer"] = {"kind": "clip-bpe", "file": BPE_FILE, "sha256": sha256_file(bpe)}
    if not src.embed_dim:
        import torch as _t

        with _t.no_grad():
            if src.image_tower is not None:
                h, w = src.image_spec.size
                src.embed_dim = int(src.image_tower(_t.zeros(1, 3, h, w)).shape[-1])
            else:
                src.embed_dim = int(src.text_tower(_t.zeros(1, src.text_spec.context_length,
                                                             dtype=_t.long)).shape[-1])
    return src
