"""Encoders: images and texts in, L2-normalised float32 embeddings out.

    enc = cliprt.Encoder.load("packages/vit-b-32")              # a package dir, or "default"
    img = enc.encode_images(["a.jpg", b"...jpeg bytes...", pil_image, uint8_array])
    txt = enc.encode_texts(["a photo of a dog", "a diagram"])
    for batch in enc.iter_images(paths, keys=paths):           # bounded memory, any length
        index.add(batch.embeddings); log(batch.errors)

Images are decoded and preprocessed by a pool of threads (cliprt.pipeline) while the image
tower runs the previous batch. Texts are tokenised in one call, sorted by token length and
run in batches of similar length; a tower whose package says so (`text.dynamic_length`,
e.g. open_clip's causal CLIP text transformer) is fed each batch only up to its longest
text instead of the full context length.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
import warnings
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._progress import progress_bar
from .models import ModelPackage, Manifest
from .batches import ItemError, prepare_batches
from .runtime import TowerSession, check_providers, default_threads

__all__ = ["Encoder", "EncodedBatch", "ItemError", "EncodeWarning"]

PRECISIONS = ("fp32", "fp16", "int8")
# A reduced-precision tower variant is used for precision="int8"/"fp16" only if its export
# verification reached this cosine against the PyTorch model; otherwise fp32 runs.
MIN_VARIANT_COSINE = 0.999
DEFAULT_IMAGE_BATCH = 32
DEFAULT_TEXT_BATCH = 64
# the most images one single-threaded run of the image tower takes at once (see _slices)
MAX_SLICE = 4


class EncodeWarning(UserWarning):
    """Items were skipped (on_error="skip")."""


@dataclasses.dataclass
class EncodedBatch:
    """One batch of `Encoder.iter_images`: `embeddings[i]` belongs to `keys[i]`; `errors`
    lists the items of this batch that could not be encoded."""
    keys: List[Any]
    embeddings: np.ndarray
    errors: List[ItemError]

    def __iter__(self):
        return iter((self.keys, self.embeddings, self.errors))


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, np.finfo(np.float32).tiny, out=norms)
    return (x / norms).astype(np.float32, copy=False)


def _verified_cosine(manifest: Manifest, tower: str, precision: str) -> Optional[float]:
    ver = manifest.provenance.get("verification") or {}
    r = (ver.get("results") or {}).get(f"{tower}.{precision}")
    try:
        return float(r["min_cosine"]) if r else None
    except (KeyError, TypeError, ValueError):
        return None


class Encoder:
    """Runs a model package's towers. Construct with :meth:`load`."""

    def __init__(self, package: ModelPackage, *, device: str = "cpu", precision: Union[str, Dict[str, str]] = "fp32",
                 backend: Optional[str] = None, threads: Optional[int] = None, image_mode: str = "exact",
                 workers: Optional[int] = None, max_pixels: Optional[int] = None, inflight: Optional[int] = None):
        device = _check_device(device)
        backend = _check_backend(backend, device)
        check_providers(device, backend)
        self.package = package
        self.manifest: Manifest = package.manifest
        self.device = device
        self.backend = backend
        self.threads = int(threads or default_threads())
        self.workers = int(workers or self.threads)
        # `inflight` image tower runs at once, each on threads // inflight cores: on CPUs, separate
        # single-threaded runs (slices of each batch, and of the next batches) avoid the
        # per-operator synchronisation of one run on all cores
        self.inflight = int(inflight) if inflight else (max(1, self.threads) if device == "cpu" else 1)
        if self.inflight < 1:
            raise ValueError(f"inflight must be at least 1, got {inflight!r}")
        self.image_mode = image_mode
        self.precisions: Dict[str, str] = {}
        self.precision_notes: Dict[str, str] = {}
        self._sessions: Dict[str, TowerSession] = {}
        for tower in self.manifest.towers:
            self.precisions[tower] = self._choose_precision(tower, precision)
        self._preprocessor = None
        self._max_pixels = max_pixels
        self._tokenizer = None
        if self.manifest.image is not None:
            self._preprocessor = self._make_preprocessor()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, model: Union[str, os.PathLike], device: str = "cpu",
             precision: Union[str, Dict[str, str]] = "fp32", backend: Optional[str] = None, **kwargs) -> "Encoder":
        """`model`: a model package directory, or a registered name ("default").
        `precision`: "fp32" | "fp16" | "int8", or per tower {"image": "int8", "text": "fp32"}.
        Reduced precisions are taken per tower where the package has the variant and its
        export verification kept min cosine >= 0.999 (see `precisions`, `precision_notes`).
        Other keywords: threads (ONNX Runtime threads), workers (decode threads),
        image_mode ("exact" | "fast"), max_pixels (decompression-bomb limit)."""
        path = _resolve(model)
        return cls(ModelPackage.load(path), device=device, precision=precision, backend=backend, **kwargs)

    def _choose_precision(self, tower: str, precision: Union[str, Dict[str, str]]) -> str:
        want = precision.get(tower, "fp32") if isinstance(precision, dict) else precision
        if want not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {want!r}")
        if isinstance(precision, dict) and set(precision) - set(self.manifest.towers):
            raise ValueError(f"precision names towers {sorted(set(precision) - set(self.manifest.towers))} "
                             f"this package does not have")
        spec = self.manifest.towers[tower]
        if want == "fp32":
            return "fp32"
        if want not in spec.precisions:
            self.precision_notes[tower] = f"no {want} variant in the package; running fp32"
            return "fp32"
        if want == "fp16" and self.device == "cpu":
            self.precision_notes[tower] = "fp16 runs slower than fp32 on CPUs; running fp32"
            return "fp32"
        cos = _verified_cosine(self.manifest, tower, want)
        if cos is None or cos < MIN_VARIANT_COSINE:
            got = "not verified" if cos is None else f"verified min cosine {cos:.5f}"
            self.precision_notes[tower] = f"{want} variant {got} < {MIN_VARIANT_COSINE}; running fp32"
            return "fp32"
        self.precision_notes[tower] = f"{want} (verified min cosine {cos:.5f})"
        return want

    def _session(self, tower: str) -> TowerSession:
        s = self._sessions.get(tower)
        if s is None:
            precision = self.precisions[tower]
            spec = self.manifest.towers[tower]
            threads = max(1, self.threads // self.inflight) if tower == "image" else self.threads
            s = TowerSession(self.package.tower_file(tower, precision), device=self.device, backend=self.backend,
                             threads=threads, precision=precision, output=spec.output)
            self._sessions[tower] = s
        return s

    def _make_preprocessor(self):
        from .preprocess import Preprocessor

        kwargs = {} if self._max_pixels is None else {"max_pixels": self._max_pixels}
        return Preprocessor(self.manifest.image, mode=self.image_mode, **kwargs)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _make_tokenizer(self.package)
        return self._tokenizer

    @property
    def dim(self) -> int:
        return self.manifest.embed_dim

    def __repr__(self) -> str:
        towers = ", ".join(f"{t}={p}" for t, p in self.precisions.items())
        return f"Encoder({self.manifest.name!r}, dim={self.dim}, device={self.device!r}, {towers})"

    # ------------------------------------------------------------------ images
    def _need(self, tower: str) -> None:
        if tower not in self.manifest.towers:
            raise ValueError(f"model {self.manifest.name!r} has no {tower} tower "
                             f"(towers: {', '.join(self.manifest.towers)})")

    def iter_images(self, items: Iterable, keys: Optional[Iterable] = None, batch_size: Optional[int] = None,
                    on_error: str = "skip", progress: bool = False, total: Optional[int] = None
                    ) -> Iterator[EncodedBatch]:
        """Encodes a stream of images batch by batch with bounded memory; yields
        :class:`EncodedBatch` (keys, embeddings, errors). `keys` default to input positions.
        on_error="skip" (default here) reports failed items in `errors`; "raise" raises
        ImageError naming the first failed item."""
        self._need("image")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        batch_size = _positive(DEFAULT_IMAGE_BATCH if batch_size is None else batch_size, "batch_size")
        session = self._session("image")
        pre = self._preprocessor
        name = self.manifest.towers["image"].inputs[0]
        from .preprocess import describe_item

        bar = progress_bar(progress, total if total is not None else _len_or_none(items), "encoding images", "image")
        inflight = self.inflight
        runner = cf.ThreadPoolExecutor(inflight, thread_name_prefix="cliprt-infer") if inflight > 1 else None
        # batches whose runs are outstanding: one more than the runners, so that a runner that
        # finishes finds the next batch's slices already queued
        keep = inflight + 1 if runner is not None else 1
        pending: collections.deque = collections.deque()

        def finish(batch, parts) -> EncodedBatch:
            if not parts:
                emb = np.zeros((0, self.dim), np.float32)
            else:
                emb = parts[0] if len(parts) == 1 else np.concatenate(parts)
                if not self.manifest.normalized:
                    emb = _normalise_rows(emb)
            if bar is not None:
                bar.update(len(batch.keys) + len(batch.errors))
            return EncodedBatch(batch.keys, emb, batch.errors)

        try:
            for batch in prepare_batches(items, pre.into, pre.shape, batch_size, self.workers, keys=keys,
                                         keep=keep, describe=lambda item, i: describe_item(item, i)):
                if batch.errors and on_error == "raise":
                    from .preprocess import ImageError

                    raise ImageError(batch.errors[0].message)
                if runner is None:
                    yield finish(batch, [session.run({name: batch.pixels})] if len(batch.keys) else [])
                    continue
                # each batch is cut into slices run at once, one per runner (one core each); a
                # batch's buffer stays valid while `keep` batches are outstanding
                runs = [runner.submit(session.run, {name: batch.pixels[a:b]})
                        for a, b in _slices(len(batch.keys), inflight)]
                pending.append((batch, runs))
                if len(pending) >= keep:
                    done, runs = pending.popleft()
                    yield finish(done, [r.result() for r in runs])
            while pending:
                done, runs = pending.popleft()
                yield finish(done, [r.result() for r in runs])
        finally:
            if runner is not None:
                runner.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()

    def encode_images(self, items: Iterable, batch_size: Optional[int] = None, progress: bool = False,
                      on_error: str = "raise", return_errors: bool = False):
        """Paths, bytes, PIL images or uint8 HWC arrays -> float32 (n, dim), L2-normalised,
        in input order. With on_error="skip" failed items are left out (a warning names
        them; return_errors=True returns (embeddings, indices, errors) instead, `indices`
        being the input positions of the rows)."""
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(items, (str, bytes, os.PathLike)) or _is_single_image(items):
            items = [items]
        parts: List[np.ndarray] = []
        indices: List[int] = []
        errors: List[ItemError] = []
        for batch in self.iter_images(items, batch_size=batch_size, on_error=on_error, progress=progress):
            parts.append(batch.embeddings)
            indices.extend(batch.keys)
            errors.extend(batch.errors)
        emb = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
        if return_errors:
            return emb, np.asarray(indices, dtype=np.int64), errors
        if errors:
            shown = "; ".join(str(e) for e in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            warnings.warn(f"skipped {len(errors)} image(s): {shown}{more}", EncodeWarning, stacklevel=2)
        return emb

    # ------------------------------------------------------------------ texts
    def tokenize(self, texts: Sequence[str]) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        """Token arrays for the text tower (padded to the context length) and each text's
        length in tokens."""
        self._need("text")
        texts = _check_texts(texts)
        tok = self.tokenizer
        if self.manifest.text.tokenizer == "clip-bpe":
            ids, lengths = tok.encode_with_lengths(texts)
            return {"input_ids": ids}, lengths
        feeds = tok(texts)
        return feeds, feeds["attention_mask"].sum(axis=1)

    def encode_texts(self, texts: Union[str, Sequence[str]], batch_size: Optional[int] = None,
                     progress: bool = False, return_lengths: bool = False):
        """Texts -> float32 (n, dim), L2-normalised, in input order. With return_lengths,
        (embeddings, each text's length in tokens)."""
        self._need("text")
        single = isinstance(texts, str)
        texts = [texts] if single else texts
        batch_size = _positive(DEFAULT_TEXT_BATCH if batch_size is None else batch_size, "batch_size")
        feeds, lengths = self.tokenize(texts)
        n = len(lengths)
        out = np.empty((n, self.dim), np.float32)
        if n == 0:
            return (out, np.asarray(lengths)) if return_lengths else out
        session = self._session("text")
        names = self.manifest.towers["text"].inputs
        missing = [k for k in names if k not in feeds]
        if missing:
            raise ValueError(f"the text tower needs inputs {missing} that the tokenizer does not produce")
        dynamic = self.manifest.text.dynamic_length
        order = np.argsort(lengths, kind="stable") if dynamic else np.arange(n)
        bar = progress_bar(progress, n, "encoding texts", "text")
        try:
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                width = int(lengths[rows].max()) if dynamic else None
                batch = {k: feeds[k][rows, :width] for k in names}
                emb = session.run(batch)
                out[rows] = emb if self.manifest.normalized else _normalise_rows(emb)
                if bar is not None:
                    bar.update(len(rows))
        finally:
            if bar is not None:
                bar.close()
        return (out, np.asarray(lengths)) if return_lengths else out


# ---------------------------------------------------------------------- helpers

def _slices(n: int, runners: int) -> List[Tuple[int, int]]:
    """Row ranges that cut a batch of `n` into the fewest near-equal slices of at most
    MAX_SLICE rows that still give each runner one. Small slices keep a core's activations in
    its cache and the pipeline fine-grained (what the slicing gains: benchmarks/results/encode.md)."""
    if n == 0:
        return []
    parts = min(n, max(runners, -(-n // MAX_SLICE)))
    edges = [n * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _check_device(device) -> str:
    """The canonical name ("cpu" or "cuda:N") of a device ("cpu", "cuda", "cuda:N", torch.device)."""
    from ._device import device_name, parse_device

    try:
        return device_name(parse_device(device))
    except TypeError as e:
        raise ValueError(str(e)) from None


def _check_backend(backend: Optional[str], device: str) -> str:
    if backend is None:
        return "ort"
    if backend not in ("ort", "tensorrt"):
        raise ValueError(f"backend must be 'ort' or 'tensorrt', got {backend!r}")
    if backend == "tensorrt" and device == "cpu":
        raise ValueError("backend='tensorrt' needs device='cuda'")
    return backend


def _resolve(model) -> str:
    from .registry import resolve_model

    return resolve_model(model)


def _make_tokenizer(package: ModelPackage):
    from .text import ClipTokenizer, WordPieceTokenizer

    spec = package.manifest.text
    path = package.file(spec.tokenizer_file)
    if spec.tokenizer == "clip-bpe":
        return ClipTokenizer.from_vocab(path, context_length=spec.context_length)
    if spec.tokenizer == "wordpiece":
        return WordPieceTokenizer.from_file(path, context_length=spec.context_length)
    raise ValueError(f"tokenizer kind {spec.tokenizer!r} of model {package.manifest.name!r} is not supported "
                     "by the encoder yet")


def _check_texts(texts) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _is_single_image(item) -> bool:
    if isinstance(item, np.ndarray):
        return item.ndim in (2, 3) and item.dtype == np.uint8
    return type(item).__module__.startswith("PIL.")


def _len_or_none(items) -> Optional[int]:
    try:
        return len(items)
    except TypeError:
        return None
