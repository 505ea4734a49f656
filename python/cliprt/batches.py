"""The decode -> preprocess -> batch pipeline that feeds an image tower.

Items are pulled lazily from any iterable, `batch_size` at a time. Each item is decoded and
preprocessed by a pool of worker threads straight into its row of a preallocated batch
buffer (PIL's decoders and resamplers and numpy release the GIL, so the threads run in
parallel with each other and with the tower, whose ONNX Runtime session releases it too).
`depth` batches are prepared ahead of the one the caller is working on; with `depth + 1`
buffers in a ring, memory stays bounded whatever the length of the stream.

A failed item (unreadable, truncated, too large, unsupported) never stops the other items
of its batch: it is reported as an :class:`ItemError` beside the batch, and the batch holds
only the items that decoded.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import itertools
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["ItemError", "PreparedBatch", "prepare_batches"]


@dataclasses.dataclass(frozen=True)
class ItemError:
    """An item that could not be used: its position in the input, its key, and why."""
    index: int
    key: Any
    message: str

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass
class PreparedBatch:
    """`pixels[i]` is the preprocessed image of `keys[i]` (input position `indices[i]`).
    `pixels` is a view of a ring buffer: valid until the next batch is requested."""
    keys: List[Any]
    indices: np.ndarray
    pixels: np.ndarray
    errors: List[ItemError]


def prepare_batches(items: Iterable, fill: Callable[[Any, np.ndarray, str], None], shape: Tuple[int, ...],
                    batch_size: int, workers: int, *, keys: Optional[Iterable] = None, depth: int = 2,
                    keep: int = 1, describe: Callable[[Any, int], str] = lambda item, i: f"item {i}",
                    dtype=np.float32) -> Iterator[PreparedBatch]:
    """Yields the items of `items` prepared by `fill(item, out_row, name)` in batches, in input
    order. `fill` raises to reject an item; its message becomes the ItemError's.
    A yielded batch's pixels stay valid until `keep` more batches have been requested (the
    ring holds `depth + keep` buffers), so a caller may run `keep` batches at once."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if depth < 1 or keep < 1:
        raise ValueError("depth and keep must be at least 1")
    buffers = [np.empty((batch_size,) + tuple(shape), dtype) for _ in range(depth + keep)]
    source = enumerate(zip(keys, items) if keys is not None else ((None, it) for it in items))
    pending: collections.deque = collections.deque()
    counter = itertools.count()

    def task(item, row, name):
        try:
            fill(item, row, name)
            return None
        except Exception as e:  # every failure of one item is that item's error
            return f"{name}: {e}" if name not in str(e) else str(e)

    def submit(pool) -> bool:
        chunk = list(itertools.islice(source, batch_size))
        if not chunk:
            return False
        buf = buffers[next(counter) % len(buffers)]
        futures = []
        for row, (index, (key, item)) in enumerate(chunk):
            name = describe(item, index)
            futures.append(pool.submit(task, item, buf[row], name))
        pending.append((buf, chunk, futures))
        return True

    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cliprt-decode")
    try:
        for _ in range(depth):
            if not submit(pool):
                break
        while pending:
            buf, chunk, futures = pending.popleft()
            submit(pool)
            results = [f.result() for f in futures]
            errors = []
            ok = []
            for row, ((index, (key, _)), message) in enumerate(zip(chunk, results)):
                if message is None:
                    ok.append(row)
                else:
                    errors.append(ItemError(index, key if keys is not None else index, message))
            if len(ok) == len(chunk):
                pixels = buf[:len(chunk)]
            else:
                pixels = buf[np.asarray(ok, dtype=np.int64)]
            batch_keys = [chunk[r][1][0] if keys is not None else chunk[r][0] for r in ok]
            indices = np.asarray([chunk[r][0] for r in ok], dtype=np.int64)
            yield PreparedBatch(batch_keys, indices, pixels, errors)
    finally:
        for _, _, futures in pending:
            for f in futures:
                f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
