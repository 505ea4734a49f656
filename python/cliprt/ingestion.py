"""Resumable ingest: images from sources, through an encoder, into a collection.

    report = cliprt.ingest(collection, "photos/", encoder)          # or collection.ingest(...)
    report = collection.ingest(["a.tar", "b.tar"], encoder, commit_every=4096, retry_failed=True)

Each item of the sources (``cliprt.sources``: folders, file lists, tar shards, or
``SourceItem``s from the caller) is looked up by its key first: one that the collection
already holds, or failed on, with the same size and mtime is skipped, so a rerun does only
what is new or changed (and, with ``retry_failed``, what failed before). The rest is decoded
and embedded by ``Encoder.iter_images`` (decode threads ahead of the tower); each batch is
added to the collection with its metadata, unreadable images are recorded as failures with
their reason, and the collection is committed every ``commit_every`` items and at the end,
so an interrupted run loses at most the items since the last commit. The CLI's ``cliprt
embed``, the service and the distributed ingest are callers of this one function.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Sequence, Union

from ._progress import progress_bar
from .sources import SourceError, SourceItem, iter_source

__all__ = ["IngestReport", "ingest"]

Sources = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Iterable[SourceItem]]


@dataclasses.dataclass
class IngestReport:
    """What one ingest did. ``failures``: ``{"key", "path", "error"}`` of this run's failures."""

    embedded: int
    skipped: int
    failed: int
    total: int                    # items in the collection afterwards
    seconds: float
    collection: str
    failures: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 and self.embedded else 0.0

    def to_json(self) -> Dict[str, Any]:
        return {"embedded": self.embedded, "skipped": self.skipped, "failed": self.failed, "total": self.total,
                "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
                "index": self.collection,
                "failures": [{"path": f["path"], "error": f["error"]} for f in self.failures]}


def _items(source: Sources) -> Iterator[SourceItem]:
    if isinstance(source, (str, os.PathLike)):
        yield from iter_source(source)
        return
    for s in source:
        if isinstance(s, SourceItem):
            yield s
        else:
            yield from iter_source(s)


def _describe(source: Sources) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in source):
        return ", ".join(map(os.fspath, source))
    return "the given items"


def ingest(collection, source: Sources, encoder, *, batch_size: int = 32, commit_every: int = 2048,
           retry_failed: bool = False, progress: Union[bool, Callable[[int], None]] = False) -> IngestReport:
    """Embeds the images of ``source`` that ``collection`` does not hold yet (see the module
    notes) and returns the report. ``progress``: a bar on stderr (True), or a callback called
    with the number of items finished since its last call.

    Raises ``SourceError`` when a source does not exist or holds no images at all, and
    ``ValueError`` when the encoder has no image tower or its dimension is not the
    collection's; items that cannot be read are failures in the report, not errors."""
    if "image" not in encoder.manifest.towers:
        raise ValueError(f"model {encoder.manifest.name!r} has no image tower")
    if encoder.dim != collection.config["dim"]:
        raise ValueError(f"collection {collection.path!r} holds {collection.config['dim']}-d embeddings, "
                         f"the model gives {encoder.dim}-d")
    if commit_every < 1:
        raise ValueError(f"commit_every must be at least 1, got {commit_every}")
    known = collection.known()
    skipped = 0
    pending: Dict[str, Dict[str, Any]] = {}

    def todo() -> Iterator[SourceItem]:
        nonlocal skipped
        for item in _items(source):
            if item.key in pending:                 # listed twice in this run
                continue
            prev = known.get(item.key)
            if prev is not None and prev[0] == item.size and prev[1] == item.mtime and not (prev[2] and retry_failed):
                skipped += 1
                continue
            pending[item.key] = {"key": item.key, "path": item.path, "size": item.size, "mtime": item.mtime}
            yield item

    items = todo()
    first = next(items, None)
    if first is None and skipped == 0:
        raise SourceError(f"no images found in {_describe(source)}")
    stream = ((it.key, it.data) for it in itertools.chain([first] if first is not None else [], items))
    key_iter, data_iter = _split(stream)
    bar = progress_bar(progress is True, None, "embedding", "img")
    tick = progress if callable(progress) else (bar.update if bar is not None else None)
    embedded = failed = since_commit = 0
    failures: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for batch in encoder.iter_images(data_iter, keys=key_iter, batch_size=batch_size,
                                         on_error="skip"):
            records = [pending.pop(k) for k in batch.keys]
            if records:
                collection.add(batch.embeddings, records)
            errors = [dict(pending.pop(e.key), error=e.message) for e in batch.errors]
            if errors:
                collection.add_failures(errors)
                failures += errors
            embedded += len(records)
            failed += len(errors)
            since_commit += len(records) + len(errors)
            if since_commit >= commit_every:
                collection.commit()
                since_commit = 0
            if tick is not None:
                tick(len(records) + len(errors))
        collection.commit()
    finally:
        if bar is not None:
            bar.close()
    return IngestReport(embedded=embedded, skipped=skipped, failed=failed, total=len(collection),
                        seconds=time.perf_counter() - t0, collection=os.path.abspath(collection.path),
                        failures=failures)


def _split(pairs):
    """Two iterators (keys, values) over one stream of pairs, consumed in lockstep in
    either order (the encoder's pipeline pulls a key, then its item)."""
    keys: collections.deque = collections.deque()
    values: collections.deque = collections.deque()
    it = iter(pairs)

    def gen(own):
        while True:
            if not own:
                try:
                    k, v = next(it)
                except StopIteration:
                    return
                keys.append(k)
                values.append(v)
            yield own.popleft()

    return gen(keys), gen(values)
