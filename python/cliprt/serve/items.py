"""Items of the served collection over HTTP: add (durable), read, delete, thumbnails.

    POST   /v1/items                  {"items": [{"key"?, "image" | "embedding" | "text", "metadata"?}]}
                                      -> {"ids": [...], "keys": [...]}, once the items are on disk
    GET    /v1/items/{id}             -> {"id", "key", "path", "size", "mtime", "metadata"}
    DELETE /v1/items/{id}             -> {"id", "deleted": true}, once the removal is on disk
    GET    /v1/items/{id}/thumbnail   -> a JPEG (PNG for images with transparency), longest side <= size

Each item gives exactly one of: a base64 image (or data URI), embedded by the served model;
a text, embedded by the text tower; or an embedding of the model's dimension. ``key`` names
the item (default: a fresh ``api:<hex>``); adding a key the collection holds replaces that
item (a new id; the old one is gone), so retrying an add whose answer was lost leaves one
item. Ids are never reused. Items added here have no file path: thumbnails exist for items
ingested from files (``cliprt embed``), from the path their metadata records and no other
file; ``ServeConfig.thumbnail_roots`` narrows that to files under given directories
(symbolic links resolved).

Durability: a commit per batch. Adds and deletes go through one `Batcher` ("items"): the
worker applies every request it took to the collection in memory and then commits once
(`Collection.commit`: the index's new segment and manifest fsynced, then the SQLite commit),
and only then answers those requests. Concurrent requests share that commit. An answered add
is therefore on disk; a kill -9 at any moment loses nothing answered, and a commit cut short
leaves index rows the metadata does not name, which readers hide and the next writer removes
(the collection's own crash repair; ids stay unique because new ids start past the index's
saved high-water mark). Searches see an item from the moment it is applied in memory, so
every answered item is searchable.

What it costs (2-core CPU VM, 64-d tiny model, items by embedding, one per request, measured
with benchmarks/serve_durability.py): a commit takes 7-12 ms; one client gets 65-76 adds/s
(p50 12-14 ms), 8 concurrent clients 190-220 adds/s (p50 34-38 ms, p99 67-80 ms) with
3.5 requests sharing each commit (two runs). Each commit writes one index segment file, and the index does not merge
segments, so commits cost more as they accumulate (the manifest names every
segment): measured on a 512-d index, a save of one row takes ~3 ms after 1 commit, ~7 ms
after 500, ~46 ms after 2000, and a search over 12k rows 1 ms -> 8 ms. Coalescing keeps the
segment count at the number of batches, not requests; a long-lived service taking a trickle
of single adds wants a segment merge in the index (not there yet), or a periodic re-ingest.
The alternative, a write-ahead log fsynced per batch and replayed at start, would avoid the
segments but needs explicit-id adds for replay and keeps answered items invisible to other
processes until a checkpoint.

The service becomes the collection's writer at its first add or delete (or at start with
``ServeConfig.write = "start"``; ``"never"`` refuses changes with 403) and keeps the lock
until it stops; another process that writes the collection meanwhile gets cliprt.LockedError,
and an add or delete while another process holds the lock is answered 409.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import io
import itertools
import json
import os
import stat
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..preprocess import ImageError
from .batcher import Batcher
from .service import RequestError, decode_image, looks_like_image_data

from fastapi import Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["register_items", "ItemWriter", "ItemNotFound"]

MAX_KEY_CHARS = 4096
MAX_META_BYTES = 64 << 10
THUMBNAIL_MIN, THUMBNAIL_MAX = 16, 1024
MAX_THUMBNAIL_SOURCE_BYTES = 64 << 20
MAX_THUMBNAIL_SOURCE_PIXELS = 64_000_000
_INT64_MAX = (1 << 63) - 1


class ItemNotFound(LookupError):
    """404: no such item, or no readable file for its thumbnail."""


class _ItemsRefused(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


# ---------------------------------------------------------------------- schemas
class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Optional[str] = Field(None, description="unique name of the item; an existing key is replaced "
                                                 "(default: a fresh api:<hex>)")
    image: Optional[str] = Field(None, description="base64 image or data URI, embedded by the served model")
    embedding: Optional[List[float]] = Field(None, description="a vector of the model's dimension")
    text: Optional[str] = Field(None, description="a text, embedded by the text tower")
    metadata: Optional[Dict[str, Any]] = Field(None, description="any JSON object (no NaN or Infinity)")


class AddItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: List[ItemIn]


class AddItemsResponse(BaseModel):
    ids: List[int]
    keys: List[str]


class ItemOut(BaseModel):
    id: int
    key: str
    path: Optional[str] = None
    size: Optional[int] = None
    mtime: Optional[float] = None
    metadata: Dict[str, Any]


class DeleteResponse(BaseModel):
    id: int
    deleted: bool


# ---------------------------------------------------------------------- the writer
class ItemWriter:
    """The service's changes to its collection: one batcher whose worker applies the adds
    and deletes it took, commits once, then answers them (see the module notes)."""

    def __init__(self, service):
        self.service = service
        self.collection = service.collection
        c = service.config
        if c.write not in ("on-demand", "start", "never"):
            raise ValueError(f"ServeConfig.write must be 'on-demand', 'start' or 'never', got {c.write!r}")
        self.mode = c.write
        self.commits = 0
        self.commit_seconds = 0.0
        self._tokens = itertools.count()
        self.batcher: Optional[Batcher] = None
        if self.collection is None or self.mode == "never":
            return
        if self.mode == "start":
            self._begin()                        # LockedError here: another process writes it
        self.batcher = Batcher("items", self._apply, max_batch=max(c.max_batch, c.max_inputs),
                               max_wait=c.max_wait_ms / 1000.0, max_queue=c.queue,
                               on_batch=lambda n, s, ok: service.metrics.batch("items", n, s, ok))
        service.batchers["items"] = self.batcher

    def _begin(self) -> None:
        col = self.collection
        if col.writing:
            return
        # Wait for the lock without holding up searches, then switch under the store lock
        # (the switch reloads the index and reopens the metadata the searches read).
        from .. import _core
        from ..index import _lock_timeout

        _core.DirectoryLock(col.path, _lock_timeout(col._timeout), "collection").release()
        with self.service.store_lock:
            col.begin_writing()

    def _apply(self, ops: List[Tuple]) -> List[Any]:
        """ops: ("add", token, vector, record) | ("delete", token, id), in arrival order."""
        out: List[Any] = [None] * len(ops)
        try:
            self._begin()
        except Exception as e:               # noqa: BLE001 - LockedError above all: every request gets it
            return [e] * len(ops)
        col = self.collection
        # Requests in order; consecutive adds with distinct keys share one Collection.add.
        requests: "collections.OrderedDict[int, List[int]]" = collections.OrderedDict()
        for i, op in enumerate(ops):
            requests.setdefault(op[1], []).append(i)
        groups: List[List[int]] = []
        keys: set = set()
        for token, rows in requests.items():
            op = ops[rows[0]][0]
            mine = {ops[i][3]["key"] for i in rows} if op == "add" else None
            if op == "add" and groups and ops[groups[-1][0]][0] == "add" and not (keys & mine):
                groups[-1].extend(rows)
                keys |= mine
            else:
                groups.append(list(rows))
                keys = mine or set()
        changed = False
        with self.service.store_lock:
            for rows in groups:
                if ops[rows[0]][0] == "delete":
                    for i in rows:
                        gone = col.remove([ops[i][2]])
                        out[i] = int(ops[i][2]) if len(gone) else ItemNotFound(f"no item with id {ops[i][2]}")
                        changed |= bool(len(gone))
                    continue
                try:
                    ids = col.add(np.stack([ops[i][2] for i in rows]), [ops[i][3] for i in rows])
                except (ValueError, TypeError) as e:
                    # Collection.add checks before it changes anything: add the requests one by
                    # one so only the bad one fails.
                    by_request: Dict[int, List[int]] = {}
                    for i in rows:
                        by_request.setdefault(ops[i][1], []).append(i)
                    if len(by_request) == 1:
                        for i in rows:
                            out[i] = RequestError(f"the items could not be added: {e}")
                        continue
                    for part in by_request.values():
                        try:
                            ids = col.add(np.stack([ops[i][2] for i in part]), [ops[i][3] for i in part])
                        except (ValueError, TypeError) as e2:
                            for i in part:
                                out[i] = RequestError(f"the items could not be added: {e2}")
                            continue
                        for i, id_ in zip(part, ids):
                            out[i] = int(id_)
                        changed = True
                    continue
                for i, id_ in zip(rows, ids):
                    out[i] = int(id_)
                changed = True
        if changed:
            t0 = time.perf_counter()
            col.commit()     # raises: every request of the batch fails and the service is not ready
            self.commit_seconds += time.perf_counter() - t0
            self.commits += 1
        return out

    def token(self) -> int:
        return next(self._tokens)


# ---------------------------------------------------------------------- validation
def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key:
        raise RequestError(f"{where}.key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise RequestError(f"{where}.key is {len(key)} characters long, more than {MAX_KEY_CHARS}")
    if "\0" in key:
        raise RequestError(f"{where}.key contains a NUL character")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where}.key is not valid Unicode (lone surrogate)") from None
    return key


def _check_meta(meta: Optional[Dict[str, Any]], where: str) -> Dict[str, Any]:
    if meta is None:
        return {}
    try:
        text = json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise RequestError(f"{where}.metadata is not storable as JSON: {e}") from None
    if len(text) > MAX_META_BYTES:
        raise RequestError(f"{where}.metadata is {len(text)} bytes as JSON, more than {MAX_META_BYTES}")
    return meta


def _check_embedding(values: List[float], dim: int, metric: str, where: str) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) != dim:
        raise RequestError(f"{where}.embedding has {v.size} values, the collection holds {dim}-d vectors")
    if not np.all(np.isfinite(v)):
        raise RequestError(f"{where}.embedding contains NaN or Inf")
    with np.errstate(over="ignore"):
        v32 = v.astype(np.float32)
    if not np.all(np.isfinite(v32)):
        raise RequestError(f"{where}.embedding has values outside the float32 range")
    if metric == "cosine" and not float(np.linalg.norm(v32)) > 0.0:
        raise RequestError(f"{where}.embedding is all zeros (a cosine index needs a direction)")
    return v32


# ---------------------------------------------------------------------- thumbnails
class _Thumbnails:
    """Thumbnails of the files items record, with a small cache keyed by file identity."""

    def __init__(self, roots, default_size: int):
        self.roots = None if roots is None else [os.path.realpath(os.fspath(r)) for r in roots]
        self.default_size = int(default_size)
        self._cache: "collections.OrderedDict[str, Tuple[bytes, str]]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def _inside(self, real: str) -> bool:
        if self.roots is None:
            return True
        return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)

    def make(self, item_id: int, path: Any, size: int) -> Tuple[bytes, str, str]:
        """(bytes, media type, etag) of item `item_id` whose metadata records `path`."""
        if not isinstance(path, str) or not path:
            raise ItemNotFound(f"item {item_id} has no recorded file (items added through the API have none)")
        if "\0" in path or not os.path.isabs(path):
            raise ItemNotFound(f"item {item_id}: its recorded path {path!r} is not an absolute path")
        real = os.path.realpath(path)
        if not self._inside(real):
            raise ItemNotFound(f"item {item_id}: its file is outside the directories thumbnails are served from")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError as e:
            raise ItemNotFound(f"item {item_id}: its file {path!r} cannot be read ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ItemNotFound(f"item {item_id}: its file {path!r} is not a regular file")
            if st.st_size > MAX_THUMBNAIL_SOURCE_BYTES:
                raise ItemNotFound(f"item {item_id}: its file {path!r} is {st.st_size} bytes, more than the "
                                   f"{MAX_THUMBNAIL_SOURCE_BYTES} a thumbnail is made from")
            etag = '"' + hashlib.sha1(f"{item_id}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{size}"
                                      .encode()).hexdigest()[:24] + '"'
            with self._lock:
                hit = self._cache.get(etag)
                if hit is not None:
                    self._cache.move_to_end(etag)
                    return hit[0], hit[1], etag
            chunks, left = [], st.st_size + 1
            while left > 0:
                b = os.read(fd, min(left, 1 << 20))
                if not b:
                    break
                chunks.append(b)
                left -= len(b)
            data = b"".join(chunks)
        except OSError as e:
            raise ItemNotFound(f"item {item_id}: its file {path!r} cannot be read ({e.strerror})") from None
        finally:
            os.close(fd)
        body, media = self._render(item_id, path, data, size)
        with self._lock:
            self._cache[etag] = (body, media)
            while len(self._cache) > 512:
                self._cache.popitem(last=False)
        return body, media, etag

    @staticmethod
    def _render(item_id: int, path: str, data: bytes, size: int) -> Tuple[bytes, str]:
        from PIL import Image, ImageOps

        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_THUMBNAIL_SOURCE_PIXELS:
                    raise ItemNotFound(f"item {item_id}: its image is {w}x{h} pixels, more than the "
                                       f"{MAX_THUMBNAIL_SOURCE_PIXELS} a thumbnail is made from")
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))
                im = ImageOps.exif_transpose(im)
                im.thumbnail((size, size))
                alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
                im = im.convert("RGBA" if alpha else "RGB")
                out = io.BytesIO()
                if alpha:
                    im.save(out, format="PNG", optimize=True)
                    return out.getvalue(), "image/png"
                im.save(out, format="JPEG", quality=85)
                return out.getvalue(), "image/jpeg"
        except ItemNotFound:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the decoder says, the file is no usable image
            raise ItemNotFound(f"item {item_id}: its file {path!r} is not a readable image "
                               f"({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------- routes
def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": str(status)}}, status_code=status)


def register_items(app, service, guarded) -> None:
    """Adds the /v1/items routes (and their error answers) to `app`, serving `service`'s
    collection; `guarded`: the dependencies every protected route carries (the API key)."""
    from ..index import LockedError

    writer = ItemWriter(service)
    app.state.items = writer
    thumbs = _Thumbnails(service.config.thumbnail_roots, service.config.thumbnail_size)
    thumb_slots = asyncio.Semaphore(max(2, 2 * (os.cpu_count() or 1)))
    errors = getattr(service.metrics, "errors", None)
    default_size = min(max(int(service.config.thumbnail_size), THUMBNAIL_MIN), THUMBNAIL_MAX)

    def count(kind: str) -> None:
        if errors is not None:
            errors.labels(kind).inc()

    @app.exception_handler(ItemNotFound)
    async def not_found(_, e: ItemNotFound):
        count("not_found")
        return _error(404, str(e), "not_found_error")

    @app.exception_handler(_ItemsRefused)
    async def refused(_, e: _ItemsRefused):
        count(e.kind)
        return _error(e.status, str(e), e.kind)

    @app.exception_handler(LockedError)
    async def locked(_, e: LockedError):
        count("locked")
        return _error(409, f"another process is writing this collection: {e}", "conflict_error")

    def need_collection(change: bool):
        if service.collection is None:
            what = "a bare index" if service.retriever is not None else "no collection"
            raise RequestError(f"items need a collection: this service serves {what} "
                               "(start it with --collection DIR)")
        if change and writer.batcher is None:
            raise _ItemsRefused(403, "this service is read-only: it does not add or delete items", "permission_error")

    async def run_ops(ops: List[Tuple]) -> List[Any]:
        return await service._run("items", ops)

    async def read(fn, *args):
        def locked_call():
            with service.store_lock:
                return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, locked_call)

    def item_id_path():
        return Path(..., ge=0, le=_INT64_MAX, description="the item's id")
    errs = {s: {"description": d} for s, d in ((400, "bad request"), (404, "no such item"), (409, "locked"),
                                                (422, "schema"))}

    @app.post("/v1/items", tags=["items"], dependencies=guarded, response_model=AddItemsResponse, responses=errs)
    async def add_items(body: AddItemsRequest):
        """Embeds and adds items with metadata; answers once they are on disk."""
        need_collection(True)
        items = body.items
        service._check_count(len(items), "items")
        dim, metric = service.collection.index.dim, service.collection.index.metric
        keys: List[str] = []
        metas: List[Dict[str, Any]] = []
        vectors: List[Optional[np.ndarray]] = [None] * len(items)
        images: Dict[int, bytes] = {}
        texts: Dict[int, str] = {}
        for i, it in enumerate(items):
            where = f"items[{i}]"
            given = [n for n in ("image", "embedding", "text") if getattr(it, n) is not None]
            if len(given) != 1:
                raise RequestError(f"{where}: give exactly one of image, embedding, text"
                                   + (f" (got {', '.join(given)})" if given else ""))
            keys.append(_check_key(it.key, where) if it.key is not None else f"api:{uuid.uuid4().hex}")
            metas.append(_check_meta(it.metadata, where))
            if it.embedding is not None:
                vectors[i] = _check_embedding(it.embedding, dim, metric, where)
            elif it.image is not None:
                images[i] = decode_image(it.image, f"{where}.image")
            else:
                if not it.text.strip():
                    raise RequestError(f"{where}.text must be a non-empty string")
                if looks_like_image_data(it.text):
                    raise RequestError(f"{where}.text is a data URI: send images as \"image\"")
                texts[i] = it.text
        seen: Dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in seen:
                raise RequestError(f"items[{i}].key {k!r} is also the key of items[{seen[k]}]")
            seen[k] = i
        if images:
            order = list(images)
            got = await asyncio.gather(*(service.embed_images([images[i]]) for i in order), return_exceptions=True)
            for i, g in zip(order, got):
                if isinstance(g, ImageError):
                    raise RequestError(f"items[{i}].image: {g}")
                if isinstance(g, BaseException):
                    raise g
                vectors[i] = g[0]
        if texts:
            order = list(texts)
            emb, _ = await service.embed_texts([texts[i] for i in order])
            for i, row in zip(order, emb):
                vectors[i] = row
        if vectors and vectors[0].shape[0] != dim:
            raise RequestError(f"the model gives {vectors[0].shape[0]}-d embeddings, the collection holds {dim}-d")
        token = writer.token()
        ops = [("add", token, np.asarray(v, np.float32), {"key": k, "meta": m})
               for v, k, m in zip(vectors, keys, metas)]
        ids = await run_ops(ops)
        return {"ids": [int(x) for x in ids], "keys": keys}

    @app.get("/v1/items/{item_id}", tags=["items"], dependencies=guarded, response_model=ItemOut, responses=errs)
    async def get_item(item_id: int = item_id_path()):
        """An item's key, recorded file (path, size, mtime) and metadata."""
        need_collection(False)
        rec = (await read(service.collection.metadata, [item_id])).get(item_id)
        if rec is None:
            raise ItemNotFound(f"no item with id {item_id}")
        return {"id": rec["id"], "key": rec["key"], "path": rec["path"], "size": rec["size"], "mtime": rec["mtime"],
                "metadata": rec["meta"]}

    @app.delete("/v1/items/{item_id}", tags=["items"], dependencies=guarded, response_model=DeleteResponse,
                responses=errs)
    async def delete_item(item_id: int = item_id_path()):
        """Removes an item; answers once the removal is on disk."""
        need_collection(True)
        if not (await read(service.collection.metadata, [item_id])):
            raise ItemNotFound(f"no item with id {item_id}")
        await run_ops([("delete", writer.token(), item_id)])
        return {"id": item_id, "deleted": True}

    @app.get("/v1/items/{item_id}/thumbnail", tags=["items"], dependencies=guarded, response_class=Response,
             responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, 404: {"description": "no image"}})
    async def thumbnail(request: Request, item_id: int = item_id_path(),
                        size: int = Query(default_size, ge=THUMBNAIL_MIN, le=THUMBNAIL_MAX,
                                          description="longest side in pixels")):
        """A small JPEG (PNG with transparency) of the file the item's metadata records."""
        need_collection(False)
        rec = (await read(service.collection.metadata, [item_id])).get(item_id)
        if rec is None:
            raise ItemNotFound(f"no item with id {item_id}")
        async with thumb_slots:
            body, media, etag = await asyncio.get_running_loop().run_in_executor(
                None, thumbs.make, item_id, rec["path"], size)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media, headers=headers)
