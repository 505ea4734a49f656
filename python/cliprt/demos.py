"""The two demonstrations behind ``cliprt demo`` and ``cliprt quickstart``, as library calls
that return their results (the CLI prints them).

* :func:`index_demo`: the index alone, on clustered synthetic embeddings, in every storage:
  add, save, memory-mapped reload, search latency and recall against exact float32 search.
* :func:`quickstart`: the default model end to end: build it once, embed sample photos into
  an i8 collection, text queries, zero-shot classification.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Dict, List, Sequence

import numpy as np

__all__ = ["index_demo", "quickstart", "sample_photos"]

DEMO_STORAGES = ("f32", "bf16", "i8", "b1")
QUICKSTART_QUERIES = ("a dog", "a red sports car", "a bird on a branch")


def _clustered(rng, n: int, dim: int, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)]
    x = x + rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def index_demo(n: int = 200_000, dim: int = 512, queries: int = 100, k: int = 10,
               seed: int = 0) -> List[Dict[str, Any]]:
    """One row per storage: add_s, save_s, load_s, search_ms_per_query, recall (@k)."""
    from .index import Index

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 1000), dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data = _clustered(rng, n, dim, centers)
    q = _clustered(rng, queries, dim, centers)
    truth = np.argsort(-(q @ data.T), axis=1, kind="stable")[:, :k]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for storage in DEMO_STORAGES:
            index = Index(dim, metric="cosine", storage=storage)
            t0 = time.perf_counter()
            index.add(data)
            t_add = time.perf_counter() - t0
            path = os.path.join(tmp, storage)
            t0 = time.perf_counter()
            index.save(path)
            t_save = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = Index.load(path, mmap=True)
            t_load = time.perf_counter() - t0
            loaded.search(q[:1], k)
            t0 = time.perf_counter()
            _, ids = loaded.search(q, k)
            t_search = time.perf_counter() - t0
            recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth)])
            rows.append({"storage": storage, "add_s": t_add, "save_s": t_save, "load_s": t_load,
                         "search_ms_per_query": 1e3 * t_search / queries, "recall": float(recall)})
    return rows


def sample_photos() -> List[str]:
    """Photos to demonstrate with: $CLIPRT_SAMPLE_IMAGES, else every 10th photo of the
    ImageNet sample beside a checkout, else the photos scikit-image ships."""
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.join(here, "..", "..", "..", "shared", "data", "imagenet-sample")
    for cand in (os.environ.get("CLIPRT_SAMPLE_IMAGES"), shared,
                 os.path.join(os.getcwd(), "..", "shared", "data", "imagenet-sample")):
        if cand and os.path.isdir(cand):
            files = sorted(f for f in os.listdir(cand) if f.lower().endswith((".jpg", ".jpeg", ".png")))
            if files:
                return [os.path.join(cand, f) for f in files[::10]]
    try:
        import skimage.data

        folder = os.path.dirname(skimage.data.__file__)
        return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                      if f.lower().endswith((".jpg", ".jpeg", ".png")))
    except ImportError:
        return []


def quickstart(queries: Sequence[str] = QUICKSTART_QUERIES, progress: bool = False) -> Dict[str, Any]:
    """Builds the default model if needed, embeds :func:`sample_photos` into a temporary i8
    collection, runs ``queries`` (top 3 each) and classifies five photos among the ImageNet
    classes (top 3). Returns {"model", "photos", "images_per_s", "searches", "classified"}."""
    from .collection import Collection
    from .encode import Encoder
    from .evaluate import builtin_classnames
    from .registry import build_default, is_built
    from .retrieval import Retriever
    from .zeroshot import ZeroShotClassifier

    if not is_built():
        build_default(progress=progress)
    photos = sample_photos()
    if not photos:
        raise FileNotFoundError("no sample photos found (install scikit-image, or set CLIPRT_SAMPLE_IMAGES to a "
                                "folder)")
    enc = Encoder.load("default")
    out: Dict[str, Any] = {"model": enc.manifest.name, "photos": len(photos)}
    with tempfile.TemporaryDirectory() as tmp:
        col = Collection.create(os.path.join(tmp, "photos"), model="default", dim=enc.dim, storage="i8")
        t0 = time.perf_counter()
        emb, idx, _ = enc.encode_images(photos, on_error="skip", return_errors=True, progress=progress)
        out["images_per_s"] = round(len(emb) / (time.perf_counter() - t0), 1)
        col.add(emb, [{"key": photos[int(i)], "path": photos[int(i)]} for i in idx])
        col.commit()
        r = Retriever(enc, col)
        out["searches"] = {q: [(os.path.basename(h.path), round(h.score, 4)) for h in r.search_text(q, k=3)]
                           for q in queries}
        clf = ZeroShotClassifier(enc, builtin_classnames("imagenet"))
        top, probs = clf.topk(embeddings=emb[:5], k=3)
        names = clf.classnames
        out["classified"] = {os.path.basename(photos[int(i)]): [(names[int(c)], round(float(p), 3))
                                                                for c, p in zip(top[row], probs[row])]
                             for row, i in enumerate(idx[:5])}
        col.close()
    return out
