"""What the HTTP service does, without the HTTP: an encoder, an optional store (a Collection
or a bare Index), and one `Batcher` per tower and one for searches.

Every request goes through a batcher, so concurrent requests share tower runs and scans;
the batchers' workers run the encoder and the index off the event loop (the encoder's own
threads do the work inside a batch). Searches coalesce when they ask for the same k, filters
and rescoring: one scan of the index serves them all, and each gets exactly what
`Retriever.search_vectors` gives for it alone.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..index import Index
from ..preprocess import ImageError
from ..retrieval import Hit, Retriever, combine, parse_query
from .batcher import Batcher, QueueFull

__all__ = ["Service", "ServeConfig", "RequestError", "QueueFull", "decode_image"]


class RequestError(ValueError):
    """A request the service refuses as malformed (HTTP 400), with the reason."""


@dataclasses.dataclass
class ServeConfig:
    max_batch: int = 32            # items per tower run
    max_wait_ms: float = 5.0       # how long the first request of a batch waits for company
    queue: int = 1024              # items waiting per batcher before 429
    timeout_s: float = 30.0        # per request, then 504
    max_body_bytes: int = 32 << 20  # request bodies past this get 413
    max_inputs: int = 256          # inputs (texts, images, queries) in one request
    max_k: int = 1000
    search_threads: int = 1        # scan threads per search batch: the other cores stay with the event loop
    write: str = "on-demand"       # items: "on-demand" (writer lock at the first add/delete), "start", "never"
    thumbnail_size: int = 256      # default longest side of /v1/items/{id}/thumbnail
    thumbnail_roots: Optional[Tuple[str, ...]] = None   # thumbnails only of files under these (None: any recorded path)


class _Metrics:
    """Hooks the app fills with Prometheus instruments; no-ops otherwise."""

    def batch(self, tower: str, size: int, seconds: float, ok: bool) -> None:
        pass


def decode_image(value: Any, what: str = "image") -> bytes:
    """The bytes of an image given as base64 or a data URI (data:image/...;base64,...)."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"{what} must be a base64 string or a data URI")
    data = value
    if value.startswith("data:"):
        head, sep, data = value.partition(",")
        if not sep or ";base64" not in head:
            raise RequestError(f"{what}: a data URI must be base64 (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not valid base64") from None
    if not raw:
        raise RequestError(f"{what} is empty")
    return raw


def looks_like_image_data(text: str) -> bool:
    """A data URI sent as text: refused rather than embedded as a string."""
    return text[:5].lower() == "data:" and ";base64," in text[:200]


class Service:
    def __init__(self, encoder, store=None, config: Optional[ServeConfig] = None, metrics: Optional[_Metrics] = None,
                 *, owns_store: bool = False):
        """`owns_store`: close the store with the service (it was opened for it); a store
        the caller passed in stays open for the caller."""
        self.encoder = encoder
        self.config = config or ServeConfig()
        self.metrics = metrics or _Metrics()
        self.collection = None
        self.retriever: Optional[Retriever] = None
        if store is not None:
            self.retriever = Retriever(encoder, store)
            self.collection = None if isinstance(store, Index) else store
        towers = encoder.manifest.towers
        c = self.config
        wait = c.max_wait_ms / 1000.0

        def hook(name):
            return lambda n, s, ok: self.metrics.batch(name, n, s, ok)

        self.batchers: Dict[str, Batcher] = {}
        if "text" in towers:
            self.batchers["text"] = Batcher("text", self._texts, max_batch=c.max_batch, max_wait=wait,
                                            max_queue=c.queue, on_batch=hook("text"))
        if "image" in towers:
            self.batchers["image"] = Batcher("image", self._images, max_batch=c.max_batch, max_wait=wait,
                                             max_queue=c.queue, on_batch=hook("image"))
        if self.retriever is not None:
            self.batchers["search"] = Batcher("search", self._searches, max_batch=c.max_batch,
                                              max_wait=wait, max_queue=c.queue, on_batch=hook("search"))
        self.started = time.time()
        self._owns_store = owns_store
        self._closed = False
        self._classifiers_lock = threading.Lock()
        # Held by searches and by the item writer's changes (and its switch to writing), so a
        # search sees the collection before or after each add or delete, never halfway.
        self.store_lock = threading.RLock()
        self._classifiers: Dict[Any, Any] = {}

    # ------------------------------------------------------------------ batch functions
    def _texts(self, texts: List[str]) -> List[Tuple[np.ndarray, int]]:
        emb, lengths = self.encoder.encode_texts(texts, batch_size=len(texts), return_lengths=True)
        return [(e, int(n)) for e, n in zip(emb, lengths)]

    def _images(self, items: List[bytes]) -> List[Any]:
        emb, idx, errors = self.encoder.encode_images(items, batch_size=len(items), on_error="skip",
                                                      return_errors=True)
        out: List[Any] = [None] * len(items)
        for row, i in zip(emb, idx):
            out[int(i)] = row
        for e in errors:
            out[int(e.key)] = ImageError(e.message)
        return out

    def _searches(self, items: List[Tuple[np.ndarray, int, Optional[dict], Optional[str]]]) -> List[Any]:
        with self.store_lock:
            return self._searches_locked(items)

    def _searches_locked(self, items: List[Tuple[np.ndarray, int, Optional[dict], Optional[str]]]) -> List[Any]:
        out: List[Any] = [None] * len(items)
        groups: Dict[str, List[int]] = {}
        for i, (_, k, where, path_like) in enumerate(items):
            groups.setdefault(json.dumps([k, where, path_like], sort_keys=True, default=str), []).append(i)
        for rows in groups.values():
            _, k, where, path_like = items[rows[0]]
            q = np.stack([items[i][0] for i in rows])
            try:
                hits = self.retriever.search_vectors(q, k=k, where=where, path_like=path_like,
                                                     threads=self.config.search_threads)
            except (ValueError, TypeError, KeyError) as e:
                for i in rows:
                    out[i] = RequestError(str(e))
                continue
            for i, h in zip(rows, hits):
                out[i] = h
        return out

    # ------------------------------------------------------------------ async API
    async def _run(self, name: str, items: List[Any]) -> List[Any]:
        batcher = self.batchers.get(name)
        if batcher is None:
            what = {"text": "a text tower", "image": "an image tower", "search": "a collection or index"}[name]
            raise RequestError(f"this service has no {what}")
        fut = batcher.submit(items)       # QueueFull propagates: 429
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.config.timeout_s)
        except asyncio.TimeoutError:
            fut.cancel()
            raise

    def _check_count(self, n: int, what: str) -> None:
        if n == 0:
            raise RequestError(f"no {what} given")
        if n > self.config.max_inputs:
            raise RequestError(f"{n} {what} in one request, more than the limit of {self.config.max_inputs}")

    async def embed_texts(self, texts: Sequence[str]) -> Tuple[np.ndarray, int]:
        texts = list(texts)
        self._check_count(len(texts), "inputs")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise RequestError(f"input {i} is not a string")
            if looks_like_image_data(t):
                raise RequestError(f"input {i} is a data URI: send images with \"modality\": \"image\" "
                                   "(it is not embedded as text)")
        rows = await self._run("text", texts)
        return np.stack([r[0] for r in rows]), sum(r[1] for r in rows)

    async def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        images = list(images)
        self._check_count(len(images), "images")
        rows = await self._run("image", images)
        return np.stack(rows)

    async def query_vector(self, query: Dict[str, Any]) -> np.ndarray:
        """One search query ({"text"} | {"image"} | {"embedding"} | {"composed"}) as a vector,
        the way Retriever builds it."""
        if not isinstance(query, dict) or len(query) != 1:
            raise RequestError('a query is an object with one of "text", "image", "embedding", "composed"')
        (kind, value), = query.items()
        if kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise RequestError("query.text must be a non-empty string")
            terms = parse_query(value)
            emb, _ = await self.embed_texts([t for t, _ in terms])
            return combine(list(emb), [w for _, w in terms])
        if kind == "image":
            emb = await self.embed_images([decode_image(value, "query.image")])
            return combine([emb[0]], [1.0])
        if kind == "embedding":
            v = np.asarray(value, dtype=np.float64) if isinstance(value, list) else None
            if v is None or v.ndim != 1 or v.dtype.kind not in "fi":
                raise RequestError("query.embedding must be a list of numbers")
            if len(v) != self.encoder.dim:
                raise RequestError(f"query.embedding has {len(v)} values, the index holds {self.encoder.dim}-d vectors")
            if not np.all(np.isfinite(v)):
                raise RequestError("query.embedding contains NaN or Inf")
            return v.astype(np.float32)
        if kind == "composed":
            if not isinstance(value, dict) or "image" not in value or "text" not in value:
                raise RequestError('query.composed needs "image" and "text" (and optionally "alpha")')
            alpha = value.get("alpha", 0.5)
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
                raise RequestError("query.composed.alpha must be a number in [0, 1]")
            if not isinstance(value["text"], str) or not value["text"].strip():
                raise RequestError("query.composed.text must be a non-empty string")
            terms = parse_query(value["text"])
            img, (txt, _) = await asyncio.gather(self.embed_images([decode_image(value["image"], "query.composed.image")]),
                                                 self.embed_texts([t for t, _ in terms]))
            weights = [1.0 - float(alpha)] + [float(alpha) * w for _, w in terms]
            return combine([img[0]] + list(txt), weights)
        raise RequestError(f'unknown query kind {kind!r} (one of "text", "image", "embedding", "composed")')

    async def search(self, queries: Sequence[Dict[str, Any]], k: int = 10, where: Optional[dict] = None,
                     path_like: Optional[str] = None) -> List[List[Hit]]:
        self._check_count(len(queries), "queries")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.config.max_k:
            raise RequestError(f"k must be an integer in [1, {self.config.max_k}], got {k!r}")
        if where is not None and not isinstance(where, dict):
            raise RequestError('filter.where must be an object {"field": value}')
        if path_like is not None and not isinstance(path_like, str):
            raise RequestError("filter.path_like must be a string")
        if (where or path_like) and self.collection is None:
            raise RequestError("metadata filters need a collection (the service serves a bare index)")
        if self.retriever is None:
            raise RequestError("this service has no collection or index to search")
        vectors = await asyncio.gather(*(self.query_vector(q) for q in queries))
        return await self._run("search", [(v, k, where or None, path_like) for v in vectors])

    def classify_embeddings(self, emb: np.ndarray, labels: List[str], templates: Optional[List[str]]) -> np.ndarray:
        """Zero-shot probabilities of image embeddings over `labels` (the class embeddings of
        the last few label sets are kept)."""
        from ..zeroshot import ZeroShotClassifier

        key = (tuple(labels), None if templates is None else tuple(templates))
        with self._classifiers_lock:
            clf = self._classifiers.pop(key, None)
        if clf is None:
            try:
                clf = ZeroShotClassifier(self.encoder, labels, templates)
                clf.class_embeddings
            except ValueError as e:
                raise RequestError(str(e)) from None
        with self._classifiers_lock:
            self._classifiers[key] = clf
            while len(self._classifiers) > 16:
                self._classifiers.pop(next(iter(self._classifiers)))
        return clf.predict_proba(embeddings=emb)

    # ------------------------------------------------------------------ state
    def ready(self) -> Tuple[bool, Dict[str, Any]]:
        """Ready when every batcher's worker lives and its last batch (if any) succeeded."""
        checks: Dict[str, Any] = {"model": self.encoder.manifest.name}
        ok = not self._closed
        for name, b in self.batchers.items():
            alive = b._thread.is_alive()
            good = alive and b.last_ok is not False
            checks[name] = "ok" if good else ("worker stopped" if not alive else "last batch failed")
            ok = ok and good
        if self.retriever is not None:
            checks["index_rows"] = len(self.retriever.index)
        return ok, checks

    def close(self) -> None:
        self._closed = True
        for b in self.batchers.values():
            b.close()
        if self.collection is not None and self._owns_store:
            self.collection.close()
