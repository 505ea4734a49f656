"""`cliprt.Client`: the service's routes as the in-process API (numpy arrays, `Hit`s), on
the standard library's HTTP client.

    c = cliprt.Client("http://127.0.0.1:8000", api_key=os.environ.get("CLIPRT_KEY"))
    emb = c.embed_texts(["a dog", "a cat"])          # float32 (2, dim)
    hits = c.search(text="a dog on a beach", k=5)     # [Hit(id, score, metadata)]
    ids = c.add(images=["a.jpg"], metadata=[{"album": "x"}])   # int64 ids, on disk when returned
"""
from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..retrieval import Hit

__all__ = ["Client", "ServiceError"]


class ServiceError(RuntimeError):
    """The service refused or failed a request: `status` and its message."""

    def __init__(self, status: int, message: str, kind: str = ""):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.kind = status, message, kind


def _image_b64(image) -> str:
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
    else:
        try:
            from PIL import Image
        except ImportError:      # pragma: no cover
            raise TypeError(f"cannot send an image of type {type(image).__name__}") from None
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"cannot send an image of type {type(image).__name__} (a path, bytes, a PIL "
                            "image or a uint8 array)")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    return base64.b64encode(data).decode("ascii")


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: Optional[str] = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
        return json.loads(self._request(method, path, body) or b"null")

    def _request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read()).get("error", {})
                raise ServiceError(e.code, err.get("message", e.reason), err.get("type", "")) from None
            except (ValueError, AttributeError):
                raise ServiceError(e.code, str(e.reason)) from None

    # ------------------------------------------------------------------ routes
    def models(self) -> Dict[str, Any]:
        return self._call("GET", "/v1/models")["data"][0]

    def ready(self) -> bool:
        try:
            return bool(self._call("GET", "/ready").get("ready"))
        except ServiceError:
            return False

    def _embeddings(self, inputs: List[str], modality: str) -> np.ndarray:
        r = self._call("POST", "/v1/embeddings", {"input": inputs, "modality": modality, "encoding_format": "base64"})
        rows = sorted(r["data"], key=lambda d: d["index"])
        return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in rows]).astype(np.float32)

    def embed_texts(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """float32 (n, dim), as Encoder.encode_texts."""
        return self._embeddings([texts] if isinstance(texts, str) else list(texts), "text")

    def embed_images(self, images) -> np.ndarray:
        """float32 (n, dim) of paths, bytes, PIL images or uint8 arrays, as Encoder.encode_images."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        return self._embeddings([_image_b64(im) for im in images], "image")

    def search(self, text: Optional[str] = None, image=None, *, embedding=None, k: int = 10, alpha: float = 0.5,
               where: Optional[Dict[str, Any]] = None, path_like: Optional[str] = None) -> List[Hit]:
        """Hits of a text, an image, both (composed, `alpha` weighs the text) or an embedding."""
        if embedding is not None:
            query: Dict[str, Any] = {"embedding": np.asarray(embedding, np.float64).tolist()}
        elif image is not None and text:
            query = {"composed": {"image": _image_b64(image), "text": text, "alpha": alpha}}
        elif image is not None:
            query = {"image": _image_b64(image)}
        elif text:
            query = {"text": text}
        else:
            raise ValueError("give a text, an image, both, or an embedding")
        body: Dict[str, Any] = {"query": query, "k": k}
        if where or path_like:
            body["filter"] = {"where": where, "path_like": path_like}
        r = self._call("POST", "/v1/search", body)
        return [Hit(h["id"], h["score"], h["metadata"]) for h in r["results"]]

    def classify(self, images, labels: Sequence[str], templates: Optional[Sequence[str]] = None) -> np.ndarray:
        """Probabilities (n, labels) of each image, as ZeroShotClassifier.predict_proba."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        body: Dict[str, Any] = {"labels": list(labels), "images": [_image_b64(im) for im in images]}
        if templates is not None:
            body["templates"] = list(templates)
        return np.asarray(self._call("POST", "/v1/classify", body)["probabilities"], np.float64)

    # ------------------------------------------------------------------ items
    def add(self, images=None, *, embeddings=None, texts=None, metadata: Optional[Sequence[Dict[str, Any]]] = None,
            keys: Optional[Sequence[str]] = None) -> np.ndarray:
        """Adds items to the served collection: `images` (paths, bytes, PIL images or uint8
        arrays), `embeddings` (n, dim) or `texts` -- one of them -- with one `metadata` dict
        and one `key` per item when given. Returns their ids (int64); when it returns, the
        items are on disk. A key the collection holds is replaced."""
        given = [(name, v) for name, v in (("images", images), ("embeddings", embeddings), ("texts", texts))
                 if v is not None]
        if len(given) != 1:
            raise ValueError("give one of images, embeddings, texts")
        kind, values = given[0]
        if kind == "images":
            if isinstance(values, (str, bytes, os.PathLike)) or not isinstance(values, (list, tuple)):
                values = [values]
            items: List[Dict[str, Any]] = [{"image": _image_b64(im)} for im in values]
        elif kind == "embeddings":
            emb = np.asarray(values, np.float64)
            if emb.ndim == 1:
                emb = emb[None]
            if emb.ndim != 2:
                raise ValueError(f"embeddings must be (n, dim), got shape {emb.shape}")
            items = [{"embedding": row.tolist()} for row in emb]
        else:
            values = [values] if isinstance(values, str) else list(values)
            items = [{"text": t} for t in values]
        for what, extra in (("metadata", metadata), ("key", keys)):
            if extra is None:
                continue
            extra = list(extra)
            if len(extra) != len(items):
                raise ValueError(f"{len(extra)} {what} values for {len(items)} items")
            for item, value in zip(items, extra):
                item[what] = value
        r = self._call("POST", "/v1/items", {"items": items})
        return np.asarray(r["ids"], np.int64)

    def get_item(self, id: int) -> Dict[str, Any]:
        """{"id", "key", "path", "size", "mtime", "metadata"} of an item (ServiceError 404 if none)."""
        return self._call("GET", f"/v1/items/{int(id)}")

    def delete(self, id: int) -> None:
        """Removes an item; on disk when it returns (ServiceError 404 if there is none)."""
        self._call("DELETE", f"/v1/items/{int(id)}")

    def thumbnail(self, id: int, size: Optional[int] = None) -> bytes:
        """The JPEG or PNG thumbnail of an item ingested from a file."""
        return self._request("GET", f"/v1/items/{int(id)}/thumbnail" + ("" if size is None else f"?size={int(size)}"))
