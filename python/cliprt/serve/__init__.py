"""`cliprt serve`: embeddings, search and zero-shot classification over HTTP.

The library part (`Service`, `Batcher`) needs nothing beyond cliprt; the app (`create_app`)
needs the 'serve' extra (FastAPI, uvicorn, prometheus_client, python-multipart).
"""
from __future__ import annotations

from .batcher import Batcher, QueueFull
from .service import RequestError, ServeConfig, Service

__all__ = ["create_app", "Service", "ServeConfig", "Batcher", "QueueFull", "RequestError"]


def create_app(*args, **kwargs):
    """The ASGI app (see cliprt.serve.app.create_app)."""
    from .app import create_app as _create

    return _create(*args, **kwargs)
