"""The HTTP face of `Service`: FastAPI routes, errors as JSON, limits, auth and metrics.

    app = cliprt.serve.create_app(model="default", collection="photos.col")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Errors come back as ``{"error": {"message", "type", "code"}}`` (the shape OpenAI clients
read): 400 for a malformed request or an unreadable image, 401 without the API key, 413 for
a body over ``max_body_bytes``, 422 for a body that does not fit the schema, 429 with
``Retry-After`` when a queue is full, 504 past the request timeout. A bad request never
becomes a 500 and never makes the service unready.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import time
from typing import Any, Dict, List, Literal, Optional, Union

import numpy as np

from ..preprocess import ImageError

try:
    import orjson as _orjson
except ImportError:       # the plain json module does the same, slower
    _orjson = None
from .batcher import QueueFull
from .page import mount_page
from .service import RequestError, ServeConfig, Service, decode_image

try:
    from fastapi import Depends, FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException
    from pydantic import BaseModel, ConfigDict, Field
except ImportError as e:          # pragma: no cover - depends on the install
    raise ImportError(f"cliprt serve needs the 'serve' extra: pip install 'cliprt[serve]' ({e})", name=e.name) from e

from .items import register_items  # noqa: E402 - needs the 'serve' extra checked above

__all__ = ["create_app"]


# ---------------------------------------------------------------------- schemas
class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Union[str, List[str]] = Field(description="a text or a list; with modality=image, base64 images or data URIs")
    model: Optional[str] = Field(None, description="accepted for compatibility; the served model answers")
    encoding_format: Literal["float", "base64"] = "float"
    modality: Literal["text", "image"] = "text"
    dimensions: Optional[int] = Field(None, description="must equal the model's dimension when given")
    user: Optional[str] = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[List[float], str]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: List[EmbeddingItem]
    model: str
    usage: Usage


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    where: Optional[Dict[str, Any]] = None
    path_like: Optional[str] = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Optional[Dict[str, Any]] = Field(
        None, description='{"text": ...} | {"image": base64} | {"embedding": [...]} | '
                          '{"composed": {"image", "text", "alpha"}}')
    queries: Optional[List[Dict[str, Any]]] = Field(None, description="several queries: results is a list per query")
    k: int = 10
    filter: Optional[Filter] = None


class SearchHit(BaseModel):
    id: int
    score: float
    metadata: Dict[str, Any]


class SearchResponse(BaseModel):
    results: Union[List[SearchHit], List[List[SearchHit]]]


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: List[str]
    templates: Optional[List[str]] = None
    image: Optional[str] = None
    images: Optional[List[str]] = None


class ClassifyResponse(BaseModel):
    labels: List[str]
    probabilities: Union[List[float], List[List[float]]]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_ERRORS = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
           422: {"model": ErrorResponse}, 429: {"model": ErrorResponse}, 504: {"model": ErrorResponse}}


def _error(status: int, message: str, kind: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": str(status)}}, status_code=status,
                        headers=headers)


class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


# ---------------------------------------------------------------------- metrics
class PrometheusMetrics:
    """Per-route request counts and latencies, batch sizes, queue depth and errors by kind,
    in a registry of the app's own (several apps in one process do not collide)."""

    def __init__(self, service_ref):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("cliprt_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("cliprt_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("cliprt_batch_size", "items per batch", ["batcher"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("cliprt_batch_seconds", "time per batch", ["batcher"], registry=self.registry)
        self.errors = Counter("cliprt_errors_total", "refused or failed requests", ["kind"], registry=self.registry)
        depth = Gauge("cliprt_queue_depth", "items waiting per batcher", ["batcher"], registry=self.registry)
        self._depth = depth
        self._service_ref = service_ref

    def batch(self, tower: str, size: int, seconds: float, ok: bool) -> None:
        self.batch_size.labels(tower).observe(size)
        self.batch_seconds.labels(tower).observe(seconds)
        if not ok:
            self.errors.labels(f"{tower}_batch_failed").inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        service = self._service_ref()
        if service is not None:
            for name, b in service.batchers.items():
                self._depth.labels(name).set(b.depth)
        return generate_latest(self.registry)


# ---------------------------------------------------------------------- the app
def create_app(model: Any = "default", *, collection: Optional[str] = None, index: Optional[str] = None,
               config: Optional[ServeConfig] = None, api_key: Optional[str] = None, device: str = "cpu",
               cors_origins: Optional[List[str]] = None, encoder=None, store=None) -> "FastAPI":
    """The ASGI app. `model`: a package directory or "default" (or pass a loaded `encoder`);
    `collection` or `index`: a directory to search (or pass a loaded `store`); `api_key`:
    required as ``Authorization: Bearer KEY`` on every route but /health, /ready, /metrics."""
    import weakref

    from ..encode import Encoder

    config = config or ServeConfig()
    if collection is not None and index is not None:
        raise ValueError("give a collection or an index, not both")
    if encoder is None:
        encoder = Encoder.load(model, device=device)
    opened = store is None and (collection is not None or index is not None)
    if store is None and collection is not None:
        from ..collection import Collection

        store = Collection.open(collection)
    elif store is None and index is not None:
        from ..index import Index

        store = Index.load(index)
    holder: Dict[str, Any] = {}
    metrics = PrometheusMetrics(lambda: holder.get("service"))
    service = Service(encoder, store, config, metrics, owns_store=opened)
    holder["service"] = weakref.proxy(service)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPI(title="cliprt", version=_version(), lifespan=lifespan,
                  description="CLIP-style embeddings, search and zero-shot classification.")
    app.state.service = service
    app.state.metrics = metrics
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(_Observe, metrics=metrics)

    # errors -------------------------------------------------------------------------
    @app.exception_handler(_Refused)
    async def refused(_, e: _Refused):
        metrics.errors.labels(e.kind).inc()
        return _error(e.status, str(e), e.kind)

    @app.exception_handler(RequestError)
    async def bad_request(_, e: RequestError):
        metrics.errors.labels("invalid_request").inc()
        return _error(400, str(e), "invalid_request_error")

    @app.exception_handler(ImageError)
    async def bad_image(_, e: ImageError):
        metrics.errors.labels("bad_image").inc()
        return _error(400, str(e), "invalid_image")

    @app.exception_handler(QueueFull)
    async def full(_, e: QueueFull):
        metrics.errors.labels("queue_full").inc()
        return _error(429, str(e), "rate_limit_exceeded", {"Retry-After": "1"})

    @app.exception_handler(asyncio.TimeoutError)
    async def timed_out(_, e):
        metrics.errors.labels("timeout").inc()
        return _error(504, f"the request took longer than {config.timeout_s:g} s", "timeout")

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        # the framework's own refusals (a body that is not JSON, an unknown route, a wrong
        # method) in the same error shape as the app's
        kind = {400: "invalid_request_error", 404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        metrics.errors.labels(kind).inc()
        return _error(e.status_code, str(e.detail), kind, e.headers)

    @app.exception_handler(Exception)
    async def internal(_, e: Exception):
        metrics.errors.labels("internal").inc()
        return _error(500, f"internal error: {type(e).__name__}: {e}", "internal_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        metrics.errors.labels("invalid_schema").inc()
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
        return _error(422, "; ".join(parts) or "invalid request body", "invalid_request_error")

    # auth ---------------------------------------------------------------------------
    async def need_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise _Refused(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")

    guarded = [Depends(need_key)]

    # routes -------------------------------------------------------------------------
    @app.get("/health", tags=["state"])
    async def health() -> Dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", tags=["state"], responses={503: {"description": "not ready"}})
    async def ready():
        """Readiness: model and index loaded, every batcher's worker alive and its last batch good."""
        ok, checks = service.ready()
        return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["state"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", tags=["models"], dependencies=guarded)
    async def models() -> Dict[str, Any]:
        """The served model: towers, dimension, precisions, device, batching."""
        m = encoder.manifest
        return {"object": "list", "data": [{
            "id": m.name, "object": "model", "owned_by": "cliprt", "dim": encoder.dim,
            "towers": sorted(m.towers), "precisions": dict(encoder.precisions), "device": device,
            "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms, "queue": config.queue,
            "index": None if service.retriever is None else {
                "rows": len(service.retriever.index), "storage": service.retriever.index.storage,
                "collection": service.collection is not None}}]}

    @app.post("/v1/embeddings", tags=["embeddings"], dependencies=guarded, response_model=EmbeddingsResponse,
              responses=_ERRORS)
    async def embeddings(body: EmbeddingsRequest):
        """Embeddings in the OpenAI shape; images with "modality": "image" (base64 or data URIs)."""
        inputs = [body.input] if isinstance(body.input, str) else list(body.input)
        if body.dimensions is not None and body.dimensions != encoder.dim:
            raise RequestError(f"dimensions={body.dimensions}: this model gives {encoder.dim}-d embeddings")
        if body.modality == "image":
            images = [decode_image(x, f"input {i}") for i, x in enumerate(inputs)]
            if not images:
                raise RequestError("no inputs given")
            emb, tokens = await service.embed_images(images), 0
        else:
            emb, tokens = await service.embed_texts(inputs)
        return _embedding_response(emb, body.encoding_format, encoder.manifest.name, tokens)

    @app.post("/v1/embed/image", tags=["embeddings"], dependencies=guarded, response_model=EmbeddingsResponse,
              responses=_ERRORS)
    async def embed_image_upload(files: List[UploadFile] = File(..., description="one or more image files"),
                                 encoding_format: Literal["float", "base64"] = "float"):
        """Image embeddings from a multipart upload (no base64 on the wire)."""
        images = [await f.read() for f in files]
        for f, data in zip(files, images):
            if not data:
                raise RequestError(f"file {f.filename!r} is empty")
        emb = await service.embed_images(images)
        return _embedding_response(emb, encoding_format, encoder.manifest.name, 0)

    @app.post("/v1/search", tags=["search"], dependencies=guarded, response_model=SearchResponse,
              responses=_ERRORS)
    async def search(body: SearchRequest):
        """Top-k of a text, image, embedding or composed query (or a batch of queries)."""
        if (body.query is None) == (body.queries is None):
            raise RequestError('give "query" or "queries" (not both)')
        queries = [body.query] if body.query is not None else body.queries
        f = body.filter or Filter()
        hits = await service.search(queries, k=body.k, where=f.where, path_like=f.path_like)
        rows = [[{"id": h.id, "score": h.score, "metadata": h.metadata} for h in hs] for hs in hits]
        return _json({"results": rows[0] if body.query is not None else rows})

    @app.post("/v1/classify", tags=["classify"], dependencies=guarded, response_model=ClassifyResponse,
              responses=_ERRORS)
    async def classify(body: ClassifyRequest):
        """Zero-shot probabilities over `labels` for one image or several."""
        if (body.image is None) == (body.images is None):
            raise RequestError('give "image" or "images" (not both)')
        labels = [str(x) for x in body.labels]
        if not labels or len(labels) > 1000 or any(not x.strip() for x in labels):
            raise RequestError("labels must be 1 to 1000 non-empty strings")
        images = [body.image] if body.image is not None else list(body.images)
        emb = await service.embed_images([decode_image(x, f"image {i}") for i, x in enumerate(images)])
        probs = await asyncio.get_running_loop().run_in_executor(
            None, service.classify_embeddings, emb, labels, body.templates)
        out = probs.tolist()
        return _json({"labels": labels, "probabilities": out[0] if body.image is not None else out})

    register_items(app, service, guarded)
    mount_page(app)
    return app


def _json(obj: Any) -> Response:
    """A JSON response written directly: the routes' bodies are built to match their
    response models, so FastAPI's validation and encoding of them (a float at a time, the
    larger part of an embedding response's cost) is skipped. orjson writes float32 arrays
    as the shortest decimals that read back to the same float32 values."""
    if _orjson is not None:
        body = _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
    else:
        body = json.dumps(obj, default=_plain).encode()
    return Response(body, media_type="application/json")


def _plain(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _embedding_response(emb: np.ndarray, encoding_format: str, model: str, tokens: int) -> Response:
    emb = np.ascontiguousarray(emb, dtype="<f4")
    if encoding_format == "base64":
        data: List[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in emb]
    else:
        data = list(emb)
    return _json({"object": "list", "data": [{"object": "embedding", "index": i, "embedding": d}
                                             for i, d in enumerate(data)],
                  "model": model, "usage": {"prompt_tokens": int(tokens), "total_tokens": int(tokens)}})


def _version() -> str:
    try:
        import cliprt

        return cliprt.__version__
    except Exception:  # noqa: BLE001
        return "0"


class _Observe:
    """Per-route request counts and latencies. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware (``@app.middleware("http")``) runs every response through a task group
    and a memory stream, which cost about a fifth of the event loop's time under load."""

    def __init__(self, app, metrics: PrometheusMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500                       # unless a response starts: an exception went past the app

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)


class _BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, by Content-Length when given and
    by counting otherwise, before a handler reads them."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._refuse(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"error": {"message": f"request body over {self.limit} bytes", "type": "request_too_large",
                                     "code": "413"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
