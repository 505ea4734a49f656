"""Encoder throughput on the user's own images and captions (``cliprt bench``)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["encoder_throughput", "DEFAULT_CAPTIONS"]

DEFAULT_CAPTIONS: List[str] = [f"a photo of a {w} next to a {v}"
                               for w in ("dog", "cat", "car", "tree", "house", "bird", "boat", "chair")
                               for v in ("table", "river", "window", "road", "person", "flower", "mountain", "lamp")]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def encoder_throughput(encoder, images: Optional[Sequence[str]] = None, texts: Optional[Sequence[str]] = None,
                       limit: int = 256, batch_size: int = 32, repeats: int = 3) -> Dict[str, Any]:
    """images/s end to end (decode, preprocess, image tower) over the first ``limit`` items
    of the ``images`` sources, and texts/s over ``texts`` (default: built-in captions), each
    the median of ``repeats`` passes after a warm-up batch."""
    from .sources import SourceError, iter_source

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    out: Dict[str, Any] = {"precisions": dict(encoder.precisions), "batch": batch_size,
                           "threads": encoder.threads, "inflight": encoder.inflight}
    if "image" in encoder.manifest.towers and images:
        # Items a source refuses (not a regular file, over the size cap) are not timed.
        paths = [it.data for _, it in zip(range(limit), (it for it in iter_source(images) if it.error is None))]
        if not paths:
            raise SourceError(f"no images found in {images}")
        encoder.encode_images(paths[:batch_size], batch_size=batch_size, on_error="skip", return_errors=True)
        failed: List[Any] = []

        def run_images():
            failed[:] = encoder.encode_images(paths, batch_size=batch_size, on_error="skip", return_errors=True)[2]

        seconds = _median_seconds(run_images, repeats)
        out.update(images=len(paths), failed=len(failed), images_per_s=round(len(paths) / seconds, 2))
    if "text" in encoder.manifest.towers:
        texts = list(texts) if texts else DEFAULT_CAPTIONS
        encoder.encode_texts(texts[:batch_size])
        seconds = _median_seconds(lambda: encoder.encode_texts(texts, batch_size=batch_size), repeats)
        out.update(texts=len(texts), texts_per_s=round(len(texts) / seconds, 1))
    return out
