"""Text -> image, image -> image and composed search over an index.

    r = cliprt.Retriever(enc, collection)                   # a Collection, or a bare Index
    hits = r.search_text("a dog on a beach -people", k=10)  # "-term": a negative term
    hits = r.search_image("query.jpg")
    hits = r.search_composed("query.jpg", "at night", alpha=0.4)
    hits = r.search_weighted([("beach", 1.0), ("people", -0.5), ("q.jpg", 0.5)], kinds=...)

A query is a weighted sum of L2-normalised text and image embeddings, normalised again
(training-free fusion): composed search weighs the image by 1 - alpha and the text by
alpha; a negative term gets a negative weight (default -0.5, the positive terms sharing +1).
Results carry the collection's metadata; `where=` / `path_like=` restrict the candidates
inside the scan.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .index import Index

__all__ = ["Retriever", "Hit", "parse_query", "combine"]

NEGATIVE_WEIGHT = 0.5


@dataclasses.dataclass
class Hit:
    id: int
    score: float
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> Optional[str]:
        return self.metadata.get("path")

    def to_json(self) -> Dict[str, Any]:
        return {"id": self.id, "score": self.score, **{k: v for k, v in self.metadata.items() if k != "id"}}


def parse_query(text: str, negative_weight: float = NEGATIVE_WEIGHT) -> List[Tuple[str, float]]:
    """'beach -people -"parked cars"' -> [("beach", 1.0), ("people", -w), ("parked cars", -w)].
    A '-' starts a negative term only at the start of a word; quotes group words."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("query text must be a non-empty string")
    positive: List[str] = []
    negative: List[str] = []
    for m in re.finditer(r'(-?)"([^"]*)"|(\S+)', text):
        if m.group(3) is not None:
            word = m.group(3)
            if word.startswith("-") and len(word) > 1:
                negative.append(word[1:])
            else:
                positive.append(word)
        else:
            (negative if m.group(1) else positive).append(m.group(2))
    if not positive:
        raise ValueError(f"query {text!r} has only negative terms")
    terms = [(" ".join(positive), 1.0)]
    terms += [(t, -float(negative_weight)) for t in negative if t.strip()]
    return terms


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x)
    if not np.isfinite(n) or n == 0:
        raise ValueError("the combined query embedding is zero: the weights cancel out")
    return x / n


def combine(embeddings: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The query of weighted terms: the weighted sum of the L2-normalised embeddings,
    normalised again (float32)."""
    q = np.zeros(len(embeddings[0]), np.float64)
    for e, w in zip(embeddings, weights):
        q += float(w) * _unit(e)
    return _unit(q).astype(np.float32)


class Retriever:
    def __init__(self, encoder, store):
        """`store`: a cliprt Collection (results carry metadata) or a bare cliprt.Index."""
        self.encoder = encoder
        if isinstance(store, Index):
            self._index, self.collection = store, None
        else:
            self._index, self.collection = None, store
        if self.index.dim != encoder.dim:
            raise ValueError(f"index holds {self.index.dim}-d vectors, the model gives {encoder.dim}-d embeddings")

    @property
    def index(self) -> Index:
        """The index searched (a collection's current one: a writer reloads it on its first change)."""
        return self._index if self.collection is None else self.collection.index

    # ------------------------------------------------------------------ queries
    def search(self, text: Optional[str] = None, image=None, k: int = 10, *, alpha: float = 0.5,
               **filters) -> List[Hit]:
        """A text query, an image, or both (composed: ``alpha`` weighs the text)."""
        if image is not None and text:
            return self.search_composed(image, text, alpha=alpha, k=k, **filters)
        if image is not None:
            return self.search_image(image, k=k, **filters)
        if text:
            return self.search_text(text, k=k, **filters)
        raise ValueError("give a text query, an image, or both")

    def search_text(self, text: str, k: int = 10, *, negative_weight: float = NEGATIVE_WEIGHT, **filters) -> List[Hit]:
        terms = parse_query(text, negative_weight)
        return self.search_weighted(terms, k=k, kinds=["text"] * len(terms), **filters)

    def search_image(self, image, k: int = 10, **filters) -> List[Hit]:
        return self.search_weighted([(image, 1.0)], k=k, kinds=["image"], **filters)

    def search_composed(self, image, text: str, alpha: float = 0.5, k: int = 10, **filters) -> List[Hit]:
        """Image and text fused: (1 - alpha) * image + alpha * text (both normalised)."""
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        terms = parse_query(text)
        items = [(image, 1.0 - float(alpha))] + [(t, float(alpha) * w) for t, w in terms]
        return self.search_weighted(items, k=k, kinds=["image"] + ["text"] * len(terms), **filters)

    def search_weighted(self, items: Sequence[Tuple[Any, float]], k: int = 10,
                        kinds: Optional[Sequence[str]] = None, **filters) -> List[Hit]:
        """Items are (text or image, weight); `kinds` says which is which ("text" / "image"),
        default: strings are texts, everything else images."""
        items = list(items)
        if not items:
            raise ValueError("no query terms")
        kinds = list(kinds) if kinds is not None else ["text" if isinstance(q, str) else "image" for q, _ in items]
        texts = [(i, q_) for i, ((q_, _), kind) in enumerate(zip(items, kinds)) if kind == "text"]
        images = [(i, q_) for i, ((q_, _), kind) in enumerate(zip(items, kinds)) if kind == "image"]
        emb: Dict[int, np.ndarray] = {}
        if texts:
            e = self.encoder.encode_texts([t for _, t in texts])
            emb.update({i: row for (i, _), row in zip(texts, e)})
        if images:
            e = self.encoder.encode_images([im for _, im in images])
            emb.update({i: row for (i, _), row in zip(images, e)})
        return self.search_vector(combine([emb[i] for i in range(len(items))], [w for _, w in items]),
                                  k=k, **filters)

    def search_vector(self, query: np.ndarray, k: int = 10, where: Optional[Dict[str, Any]] = None,
                      path_like: Optional[str] = None) -> List[Hit]:
        return self.search_vectors(np.asarray(query, np.float32)[None, :], k=k, where=where, path_like=path_like)[0]

    def search_vectors(self, queries: np.ndarray, k: int = 10, where: Optional[Dict[str, Any]] = None,
                       path_like: Optional[str] = None, threads: Optional[int] = None) -> List[List[Hit]]:
        """Hits of each row of `queries` (n, dim), all under the same filters, in one scan
        (`threads`: the index's scan threads, default all cores)."""
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2:
            raise ValueError(f"queries must be 2-D (n, dim), got shape {queries.shape}")
        if self.collection is None:
            if where or path_like:
                raise ValueError("metadata filters need a Collection, not a bare Index")
            scores, ids = self.index.search(queries, k=k, threads=threads)
            return [[Hit(int(i), float(s), {}) for s, i in zip(sr, ir) if i >= 0] for sr, ir in zip(scores, ids)]
        allow = self.collection.searchable(where, path_like)
        if allow is not None and len(allow) == 0:
            self.index.search(queries[:0], k=k)     # the same argument checks as a real search
            return [[] for _ in range(len(queries))]
        # A hit without metadata is a row the metadata has dropped since this index was
        # loaded (an item re-embedded by a writer in another process): skip it, and ask for
        # more until k hits with metadata are found or the index has no more.
        out: List[Optional[List[Hit]]] = [None] * len(queries)
        todo = np.arange(len(queries))
        want = k
        while len(todo):
            scores, ids = self.index.search(queries[todo], k=want, allow=allow, threads=threads)
            meta = self.collection.metadata(np.unique(ids[ids >= 0]))
            again = []
            for row, sr, ir in zip(todo, scores, ids):
                hits = [Hit(int(i), float(s), meta[int(i)]) for s, i in zip(sr, ir) if int(i) in meta]
                if len(hits) >= k or int((ir >= 0).sum()) < want:
                    out[row] = hits[:k]
                else:
                    again.append(row)
            todo = np.asarray(again, np.int64)
            want *= 2
        return out  # type: ignore[return-value]
