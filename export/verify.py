"""Parity verification: the exported ONNX towers against the PyTorch modules they came from.

Runs the source's PyTorch towers and ONNX Runtime (CPU execution provider) on the same
inputs -- real images from a folder (through the family's own preprocessing) or seeded
synthetic ones, and a built-in set of varied captions through the family's tokenizer -- and
reports, per tower and precision: min/mean cosine between the two embeddings, max absolute
error, top-1 agreement of image->text retrieval, and whether batch sizes 1, 3 and 17 give
the same embeddings as one batch. `VerifyReport.check()` raises `ParityError` below the
thresholds in `THRESHOLDS`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cliprt.models import ModelPackage

# minimum cosine between PyTorch fp32 and ONNX Runtime embeddings, per exported precision
THRESHOLDS: Dict[str, float] = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}
BATCH_SIZES = (1, 3, 17)
N_SYNTHETIC = 17
MAX_REAL_IMAGES = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

CAPTIONS: List[str] = [
    "a photo of a dog",
    "a photo of a cat",
    "A close-up photograph of a red sports car parked on a wet street at night.",
    "an aerial view of a city",
    "a bowl of ramen with a soft-boiled egg",
    "two children playing football in a park",
    "the Eiffel Tower at sunset",
    "a black and white sketch of a horse",
    "diagram of the human heart",
    "a screenshot of a spreadsheet",
    "snow-covered mountains reflected in a lake",
    "a plate of spaghetti",
    "an astronaut riding a horse on the moon",
    "a tabby kitten asleep on a laptop keyboard",
    "a stop sign",
    "close up of a honeybee on a sunflower",
    "a vintage typewriter on a wooden desk",
    "people waiting for a train on a crowded platform",
    "a lighthouse during a storm, waves crashing",
    "a bowl of fruit: apples, bananas and grapes",
    "handwritten note that says 'back in 5 minutes'",
    "MRI scan of a brain",
    "a neon sign reading OPEN",
    "a goldfish in a bowl",
    "an empty road through the desert",
    "café au lait and a croissant",
    "日本の寺院の写真",
    "a pixel-art sprite of a knight",
    "x",
    "",
    "a very long caption " + "that keeps going and going " * 12 + "past the context length",
    "12345 !!! ??? ### @@@",
]


class ParityError(RuntimeError):
    """The exported towers do not reproduce the PyTorch model within the thresholds."""


@dataclasses.dataclass
class TowerResult:
    tower: str
    precision: str
    n: int
    min_cosine: float
    mean_cosine: float
    max_abs_error: float
    top1_agreement: Optional[float]     # image->text retrieval argmax, ORT vs PyTorch; None without both towers
    batch_min_cosine: float             # batches 1/3/17 vs one batch (ORT, same precision)
    threshold: float

    @property
    def key(self) -> str:
        """"tower.precision", the name of this variant in reports and manifests."""
        return f"{self.tower}.{self.precision}"

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold and self.batch_min_cosine >= self.threshold

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


@dataclasses.dataclass
class VerifyReport:
    name: str
    images: str                          # where the verification images came from
    results: List[TowerResult] = dataclasses.field(default_factory=list)
    problems: List[str] = dataclasses.field(default_factory=list)   # failures other than parity
    verified: bool = True
    # "tower.precision" of optional variants: kept in a package only where they verify, so
    # their failures do not fail the report (the export drops them instead)
    optional: List[str] = dataclasses.field(default_factory=list)

    def _required(self) -> List[TowerResult]:
        return [r for r in self.results if r.key not in self.optional]

    @property
    def passed(self) -> bool:
        return not self.problems and all(r.passed for r in self._required())

    def dropped(self) -> List[TowerResult]:
        """The optional variants that did not verify."""
        return [r for r in self.results if r.key in self.optional and not r.passed]

    def failures(self) -> List[str]:
        out = list(self.problems)
        for r in self._required():
            if r.min_cosine < r.threshold:
                out.append(f"{r.tower} {r.precision}: min cosine {r.min_cosine:.7f} < {r.threshold}")
            if r.batch_min_cosine < r.threshold:
                out.append(f"{r.tower} {r.precision}: batch sizes {BATCH_SIZES} disagree with one batch "
                           f"(min cosine {r.batch_min_cosine:.7f} < {r.threshold})")
        return out

    def check(self) -> "VerifyReport":
        if not self.passed:
            raise ParityError(f"export of {self.name!r} refused, verification failed:\n  "
                              + "\n  ".join(self.failures()) + "\n" + self.table())
        return self

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "images": self.images, "verified": self.verified, "passed": self.passed,
                "thresholds": THRESHOLDS, "batch_sizes": list(BATCH_SIZES), "problems": self.problems,
                "results": [r.to_json() for r in self.results]}

    def summary(self) -> Dict[str, Any]:
        """Compact form recorded in the manifest's provenance: the variants the package keeps
        under "results"; each optional variant also beside them under its "tower.precision"
        name, with its batch agreement, threshold and whether it passed (and so was kept)."""
        dropped = self.dropped()
        kept = [r for r in self.results if r not in dropped]
        out: Dict[str, Any] = {
            "images": self.images, "passed": self.passed,
            "results": {r.key: {"min_cosine": r.min_cosine, "mean_cosine": r.mean_cosine,
                                                     "max_abs_error": r.max_abs_error,
                                                     "top1_agreement": r.top1_agreement}
                        for r in kept}}
        for r in self.results:
            if r.key in self.optional:
                out[r.key] = {
                    "min_cosine": r.min_cosine, "mean_cosine": r.mean_cosine, "max_abs_error": r.max_abs_error,
                    "batch_min_cosine": r.batch_min_cosine, "threshold": r.threshold, "passed": r.passed}
        return out

    def table(self) -> str:
        if not self.verified:
            return f"{self.name}: not verified (--no-verify)"
        lines = [f"verification of {self.name} (PyTorch vs ONNX Runtime CPU; images: {self.images})",
                 f"{'tower':6s} {'prec':5s} {'n':>3s} {'min cos':>11s} {'mean cos':>11s} {'max |err|':>10s} "
                 f"{'top-1':>6s} {'batch cos':>11s} {'need':>8s}  ok"]
        for r in self.results:
            top1 = "-" if r.top1_agreement is None else f"{r.top1_agreement:.3f}"
            ok = "yes" if r.passed else ("no, dropped (optional)" if r.key in self.optional
                                         else "NO")
            lines.append(f"{r.tower:6s} {r.precision:5s} {r.n:3d} {r.min_cosine:11.8f} {r.mean_cosine:11.8f} "
                         f"{r.max_abs_error:10.3e} {top1:>6s} {r.batch_min_cosine:11.8f} {r.threshold:8.5f}  {ok}")
        for p in self.problems:
            lines.append(f"problem: {p}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs

def _normalise(pixels01: np.ndarray, spec) -> np.ndarray:
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    return ((pixels01 - mean) / std).astype(np.float32)


def synthetic_pixels(spec, n: int = N_SYNTHETIC, seed: int = 0) -> np.ndarray:
    """Seeded synthetic images already at tower resolution, through the normalisation:
    smooth gradients with blobs and some noise, so they are not all alike."""
    rng = np.random.default_rng(seed)
    h, w = spec.size
    yy, xx = np.meshgrid(np.linspace(0, 1, h, dtype=np.float32), np.linspace(0, 1, w, dtype=np.float32),
                         indexing="ij")
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):
        for c in range(3):
            a, b, f = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(1, 8)
            img = 0.5 + 0.25 * np.sin(f * (a * xx + b * yy) * np.pi + rng.uniform(0, 6.3))
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
            img += rng.uniform(-0.4, 0.4) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
            img += rng.uniform(0, 0.15) * rng.standard_normal((h, w)).astype(np.float32)
            out[i, c] = img
    return _normalise(np.clip(out, 0, 1), spec)


def load_images(folder: str, preprocess, limit: int = MAX_REAL_IMAGES) -> np.ndarray:
    """Real images from a folder (sorted by name, first `limit`) through the family's
    reference preprocessing."""
    from PIL import Image

    if preprocess is None:
        raise ValueError("this export source has no reference preprocessing; cannot verify with real images")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder!r}")
    arrays = []
    for f in names[:limit]:
        with Image.open(os.path.join(folder, f)) as im:
            arrays.append(np.asarray(preprocess(im.convert("RGB")), dtype=np.float32))
    return np.stack(arrays)


# ----------------------------------------------------------------------------- running

def _torch_run(module, arrays: Sequence[np.ndarray]) -> np.ndarray:
    import torch

    module.eval()
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
    return out.detach().float().cpu().numpy()


def _ort_session(path: str, precision: str = "fp32"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if precision == "fp16":
        # ONNX Runtime 1.32's ORT_ENABLE_ALL (layout) optimisations crash (segfault) on
        # fp16-converted transformer graphs; extended optimisation runs them correctly
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _ort_run(session, names: Sequence[str], arrays: Sequence[np.ndarray]) -> np.ndarray:
    return session.run(None, dict(zip(names, arrays)))[0].astype(np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def _chunked(session, names, arrays, n: int, b: int) -> np.ndarray:
    return np.concatenate([_ort_run(session, names, [a[i:i + b] for a in arrays]) for i in range(0, n, b)])


def _trim_padding(arrays: List[np.ndarray], pad_id: int) -> List[np.ndarray]:
    """Drops trailing columns that are padding in every row (dynamic-length text towers)."""
    ids = arrays[0]
    used = np.nonzero((ids != pad_id).any(axis=0))[0]
    length = int(used[-1]) + 1 if len(used) else 1
    return [a[:, :length] for a in arrays]


def verify_package(source, package_dir: str, precisions: Optional[Sequence[str]] = None,
                   images: Optional[str] = None, seed: int = 0, optional: Sequence[str] = ()) -> VerifyReport:
    """Compares every tower of the package in `package_dir`, at each precision the manifest
    lists for it (only those in `precisions`, when given), against the source's PyTorch
    towers. `optional`: "tower.precision" names whose failure does not fail the report.
    Returns the report; call `.check()` to raise on failure."""
    pkg = ModelPackage.load(package_dir)
    m = pkg.manifest
    report = VerifyReport(name=source.name, images="synthetic (seeded)" if images is None else images,
                          optional=list(optional))

    inputs: Dict[str, List[np.ndarray]] = {}
    names: Dict[str, Sequence[str]] = {}
    if "image" in m.towers:
        if images is not None:
            px = load_images(images, source.preprocess)
        else:
            px = synthetic_pixels(source.image_spec, N_SYNTHETIC, seed)
        inputs["image"] = [px]
        names["image"] = m.towers["image"].inputs
    if "text" in m.towers:
        if source.tokenize is None:
            raise ValueError("this export source has no reference tokenizer; cannot verify the text tower")
        tok = source.tokenize(CAPTIONS)
        missing = [k for k in m.towers["text"].inputs if k not in tok]
        if missing:
            raise ValueError(f"tokenizer output lacks text tower inputs {missing}")
        inputs["text"] = [np.asarray(tok[k], dtype=np.int64) for k in m.towers["text"].inputs]
        names["text"] = m.towers["text"].inputs

    towers = {"image": source.image_tower, "text": source.text_tower}
    ref = {t: _torch_run(towers[t], inputs[t]) for t in inputs}
    for t, emb in ref.items():
        if emb.ndim != 2 or emb.shape[1] != m.embed_dim:
            report.problems.append(f"{t} tower outputs shape {emb.shape}, expected (batch, {m.embed_dim})")
        norms = np.linalg.norm(emb, axis=1)
        if m.normalized and np.abs(norms - 1).max() > 1e-3:
            report.problems.append(f"{t} tower output is not L2-normalised (norms {norms.min():.4f}..{norms.max():.4f})")

    for t in inputs:
        for precision in m.towers[t].precisions:
            if precisions is not None and precision not in precisions:
                continue
            sess = _ort_session(pkg.tower_file(t, precision), precision)
            out = _ort_run(sess, names[t], inputs[t])
            # dynamic batch: 1, 3 and 17 rows at a time against one batch of the same rows
            n = min(max(BATCH_SIZES), len(inputs[t][0]))
            reps = -(-max(BATCH_SIZES) // len(inputs[t][0]))
            arrs = [np.concatenate([a] * reps)[:max(BATCH_SIZES)] for a in inputs[t]] if n < max(BATCH_SIZES) \
                else [a[:n] for a in inputs[t]]
            n = len(arrs[0])
            whole = _ort_run(sess, names[t], arrs)
            worst = 1.0
            for b in BATCH_SIZES:
                worst = min(worst, float(_cosines(_chunked(sess, names[t], arrs, n, b), whole).min()))
            if t == "text" and m.text is not None and m.text.dynamic_length:
                trimmed = _trim_padding(arrs, m.text.pad_id)
                worst = min(worst, float(_cosines(_ort_run(sess, names[t], trimmed), whole).min()))
            cos = _cosines(ref[t], out)
            top1 = None
            if len(inputs) == 2:
                # this tower's ORT output against the other tower's PyTorch output
                img, txt = (out, ref["text"]) if t == "image" else (ref["image"], out)
                a = np.argmax(ref["image"] @ ref["text"].T, axis=1)
                top1 = float(np.mean(a == np.argmax(img @ txt.T, axis=1)))
            report.results.append(TowerResult(
                tower=t, precision=precision, n=len(cos), min_cosine=float(cos.min()),
                mean_cosine=float(cos.mean()), max_abs_error=float(np.abs(ref[t] - out).max()),
                top1_agreement=top1, batch_min_cosine=worst, threshold=THRESHOLDS[precision]))
    order = {p: i for i, p in enumerate(THRESHOLDS)}
    report.results.sort(key=lambda r: (order.get(r.precision, len(order)), r.tower != "image"))
    return report


def format_json(report: VerifyReport) -> str:
    return json.dumps(report.to_json(), indent=2)
