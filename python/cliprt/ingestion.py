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

Items refused before they are read (``SourceItem.error``: not a regular file, or larger
than ``max_item_bytes``, default ``cliprt.sources.DEFAULT_MAX_ITEM_BYTES`` = 64 MiB) never
reach the encoder: they are recorded as failures at once, under the same skip rules (a
rerun skips them while their size and mtime are unchanged, unless ``retry_failed``; after
raising ``max_item_bytes``, rerun with ``retry_failed=True``). Items the caller passes as
``SourceItem``s are checked the same way (a path is stat'ed, never opened, first).

Memory held by items in flight. Items are pulled from the sources only as the decode
pipeline asks for them: ``cliprt.batches.prepare_batches`` takes ``batch_size`` items per
batch and keeps ``depth`` batches submitted to its decode threads besides the one being
handed out (``depth`` = 2 as ``Encoder.iter_images`` calls it), so at most
``(depth + 1) * batch_size`` items are referenced at once (96 at the default batch of 32);
the source generators do not run ahead (a tar shard is read one member per item pulled,
``_split`` below holds at most the one pair being handed over, and this function keeps no
item once it is handed on). The bytes held are therefore bounded:

* raw data: an item from a tar shard (or bytes from the caller) is held whole, so at most
  ``(depth + 1) * batch_size * max_item_bytes`` (6 GiB at the defaults in the worst case,
  every item at the cap; lower ``batch_size`` or ``max_item_bytes`` to lower it). A file
  path holds no data: the decoder reads the file as it decodes.
* decoded images: each of the encoder's ``workers`` decode threads decodes one image at a
  time, of at most ``max_pixels`` (``cliprt.preprocess.DEFAULT_MAX_PIXELS``, 89.5 Mpx; a
  larger one is refused from its header, before it is decoded) at 4 bytes a pixel (PIL
  keeps RGB in 4): about 360 MB, twice that while an EXIF-rotated image is transposed
  whole, so ``workers * 2 * max_pixels * 4`` bytes at most (the resized copies are small).
* preprocessed batches: ``depth + keep`` float32 buffers of ``batch_size`` rows (``keep``
  = the encoder's ``inflight`` + 1), each row ``3 * H * W * 4`` bytes (0.6 MB at 224 px).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from ._progress import progress_bar
from .sources import DEFAULT_MAX_ITEM_BYTES, SourceError, SourceItem, check_item, iter_source

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


def _items(source: Sources, max_item_bytes: int) -> Iterator[SourceItem]:
    if isinstance(source, (str, os.PathLike)):
        yield from iter_source(source, max_item_bytes)
        return
    for s in source:
        if isinstance(s, SourceItem):
            yield check_item(s, max_item_bytes)
        else:
            yield from iter_source(s, max_item_bytes)


def _describe(source: Sources) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in source):
        return ", ".join(map(os.fspath, source))
    return "the given items"


def ingest(collection, source: Sources, encoder, *, batch_size: int = 32, commit_every: int = 2048,
           retry_failed: bool = False, progress: Union[bool, Callable[[int], None]] = False,
           max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> IngestReport:
    """Embeds the images of ``source`` that ``collection`` does not hold yet (see the module
    notes) and returns the report. ``progress``: a bar on stderr (True), or a callback called
    with the number of items finished since its last call. ``max_item_bytes``: items larger
    than this (a file's size, a tar member's declared size) are failures, never read.

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
    for name, value in (("batch_size", batch_size), ("max_item_bytes", max_item_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    # The writer lock first: what is already done is read under it, so no other writer can
    # change it before this run's commits (Collection: readers and the writer).
    collection.begin_writing()
    known = collection.known()
    skipped = 0
    pending: Dict[str, Dict[str, Any]] = {}
    refused: set = set()                            # keys of this run's items refused unread
    bar = None                  # shown once there is work, so an error before is all that is printed
    early = 0                   # items finished before the bar is shown
    embedded = failed = since_commit = 0
    failures: List[Dict[str, Any]] = []

    def record_failures(errors: List[Dict[str, Any]]) -> None:
        nonlocal failed, since_commit
        collection.add_failures(errors)
        failures.extend(errors)
        failed += len(errors)
        since_commit += len(errors)

    def todo() -> Iterator[SourceItem]:
        nonlocal skipped
        for item in _items(source, max_item_bytes):
            if item.key in pending or item.key in refused:      # listed twice in this run
                continue
            prev = known.get(item.key)
            if prev is not None and prev[0] == item.size and prev[1] == item.mtime and not (prev[2] and retry_failed):
                skipped += 1
                continue
            if item.error is not None:
                # refused unread (not a regular file, over max_item_bytes): a failure now, not
                # an item for the decoder; committed with the next batch or at the end
                refused.add(item.key)
                record_failures([{"key": item.key, "path": item.path, "size": item.size, "mtime": item.mtime,
                                  "error": item.error}])
                tick(1)
                continue
            pending[item.key] = {"key": item.key, "path": item.path, "size": item.size, "mtime": item.mtime}
            yield item

    def tick(n: int) -> None:
        nonlocal early
        if callable(progress):
            progress(n)
        elif bar is not None:
            bar.update(n)
        else:
            early += n

    def stream(items: Iterator[SourceItem]):
        for it in items:
            yield it.key, it.data

    try:
        items = todo()
        first = next(items, None)       # to tell an empty source before starting the pipeline
        if first is None and skipped == 0 and failed == 0:
            raise SourceError(f"no images found in {_describe(source)}")

        def chained(head: Optional[SourceItem]) -> Iterator[SourceItem]:
            if head is not None:
                yield head
            del head                    # held no longer than the pipeline holds it
            yield from items

        rest = chained(first)
        del first
        bar = progress_bar(progress is True, None, "embedding", "img")
        if bar is not None and early:
            bar.update(early)
        key_iter, data_iter = _split(stream(rest))
        t0 = time.perf_counter()
        for batch in encoder.iter_images(data_iter, keys=key_iter, batch_size=batch_size,
                                         on_error="skip"):
            records = [pending.pop(k) for k in batch.keys]
            if records:
                collection.add(batch.embeddings, records)
            errors = [dict(pending.pop(e.key), error=e.message) for e in batch.errors]
            if errors:
                record_failures(errors)
            embedded += len(records)
            since_commit += len(records)
            if since_commit >= commit_every:
                collection.commit()
                since_commit = 0
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
