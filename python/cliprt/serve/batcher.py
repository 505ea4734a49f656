"""Dynamic batching: concurrent requests to one function coalesce into batches.

A `Batcher` owns one worker thread and one bounded queue. `submit(items)` queues a request
(a list of items) and returns a `concurrent.futures.Future` of its results. The worker takes
the oldest request, then keeps adding the next ones while the batch holds fewer than
`max_batch` items and the oldest has waited less than `max_wait` seconds; it calls
`fn(all_items)` once and hands each request its slice of the results. A request is never
split across batches. `fn` may return an exception instance in place of an item's result:
that item's request fails with it, the others in the batch do not.

The queue is bounded in items: a submit that would go past `max_queue` raises `QueueFull`
at once (the service answers 429), so a burst never grows memory or latency without limit.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import threading
import time
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

__all__ = ["Batcher", "QueueFull"]


class QueueFull(Exception):
    """The batcher's queue holds `max_queue` items already."""


class Batcher:
    def __init__(self, name: str, fn: Callable[[List[Any]], Sequence[Any]], *, max_batch: int, max_wait: float,
                 max_queue: int, on_batch: Optional[Callable[[int, float, bool], None]] = None):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.name = name
        self._fn = fn
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.max_queue = int(max_queue)
        self._on_batch = on_batch
        self._queue: Deque[Tuple[List[Any], cf.Future, float]] = collections.deque()
        self._queued_items = 0
        self._cond = threading.Condition()
        self._closed = False
        self.last_ok: Optional[bool] = None      # None until the first batch ran
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name=f"cliprt-batch-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return self._queued_items

    def submit(self, items: List[Any]) -> cf.Future:
        fut: cf.Future = cf.Future()
        if not items:
            fut.set_result([])
            return fut
        with self._cond:
            if self._closed:
                raise RuntimeError(f"the {self.name} batcher is closed")
            if self._queued_items + len(items) > self.max_queue:
                raise QueueFull(f"the {self.name} queue is full ({self._queued_items} of {self.max_queue} items)")
            self._queue.append((list(items), fut, time.monotonic()))
            self._queued_items += len(items)
            self._cond.notify()
        return fut

    def _take(self) -> Optional[List[Tuple[List[Any], cf.Future, float]]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            batch = [self._queue.popleft()]
            n = len(batch[0][0])
            deadline = batch[0][2] + self.max_wait
            while n < self.max_batch:
                if self._queue:
                    if n + len(self._queue[0][0]) > self.max_batch:
                        break
                    req = self._queue.popleft()
                    batch.append(req)
                    n += len(req[0])
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            self._queued_items -= n
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [(items, fut) for items, fut, _ in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            items = [x for its, _ in live for x in its]
            t0 = time.perf_counter()
            try:
                results = list(self._fn(items))
                if len(results) != len(items):
                    raise RuntimeError(f"{self.name}: {len(results)} results for {len(items)} items")
                ok = True
            except BaseException as e:   # noqa: BLE001 - handed to every request of the batch
                results, ok = None, False
                for _, fut in live:
                    fut.set_exception(e)
            self.last_ok = ok
            self.batches += 1
            if self._on_batch is not None:
                self._on_batch(len(items), time.perf_counter() - t0, ok)
            if results is None:
                continue
            at = 0
            for its, fut in live:
                part = results[at:at + len(its)]
                at += len(its)
                bad = next((r for r in part if isinstance(r, BaseException)), None)
                if bad is not None:
                    fut.set_exception(bad)
                else:
                    fut.set_result(part)

    def close(self, timeout: float = 10.0) -> None:
        """Stops taking requests; what is queued still runs; waits for the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
