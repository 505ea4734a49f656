"""Thread safety of cliprt.Index (index.h: any number of concurrent searches; add, remove
and save are serialised with them by a reader-writer lock, so a search sees the index
either before or after each add).

The native calls release the GIL, so Python threads really run them concurrently.
Seeds are fixed per test and named in failure messages.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cliprt import Index

DIM = 64
HALF = DIM // 2


def _rng(seed):
    return np.random.default_rng(seed)


def _data(n, seed, dim=DIM):
    return _rng(seed).standard_normal((n, dim)).astype(np.float32)


class _Errors:
    """Collects exceptions raised in worker threads, re-raised in the test thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def run(self, fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001
            with self.lock:
                self.items.append(e)

    def check(self):
        if self.items:
            raise self.items[0]


def _start(errors, fn, *args):
    t = threading.Thread(target=errors.run, args=(fn, *args), daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------------------------------
# Concurrent searches equal a serial run


def _search_plans(ix, seed):
    rng = _rng(seed)
    ids = np.sort(ix.ids())
    plans = []
    for i in range(12):
        q = rng.standard_normal((int(rng.integers(1, 60)), DIM)).astype(np.float32)
        kw = dict(k=int(rng.choice([1, 5, 10, 37])))
        if i % 3 == 1:
            kw["threads"] = int(rng.choice([1, 2]))
        if i % 4 == 2:
            kw["allow"] = rng.choice(ids, size=int(rng.choice([20, len(ids) // 2])), replace=False)
        if ix.keep_originals and i % 5 == 3:
            kw["rescore"] = 0
        plans.append((q, kw))
    return plans


@pytest.mark.parametrize("source", ["memory", "mmap", "read"])
@pytest.mark.parametrize("storage", ["f32", "f16", "i8", "b1"])
def test_concurrent_searches_match_serial(tmp_path, storage, source):
    seed = 101
    ix = Index(DIM, metric="cosine", storage=storage)
    ix.add(_data(30_000, seed))
    if source != "memory":
        ix.save(tmp_path / "ix")
        ix = Index.load(tmp_path / "ix", mmap=(source == "mmap"))
    plans = _search_plans(ix, seed + 1)
    serial = [ix.search(q, **kw) for q, kw in plans]

    def worker(t):
        out = []
        order = np.random.default_rng(seed + 10 + t).permutation(len(plans))
        for rep in range(3):
            for i in order:
                q, kw = plans[i]
                out.append((i, ix.search(q, **kw)))
        return out

    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(worker, range(4)))
    for t, res in enumerate(results):
        for i, (s, ids) in res:
            np.testing.assert_array_equal(ids, serial[i][1], err_msg=f"seed={seed} thread={t} plan={i}")
            np.testing.assert_array_equal(s, serial[i][0], err_msg=f"seed={seed} thread={t} plan={i}")


def test_concurrent_mixed_readers(tmp_path):
    """search, reconstruct, contains, ids and len all at once on one loaded index."""
    seed = 7
    x = _data(5000, seed)
    ix = Index(DIM, storage="i8")
    ix.add(x)
    ix.save(tmp_path / "ix")
    ix = Index.load(tmp_path / "ix")      # id map built lazily: first users race to build it
    q = x[:20]
    want_s, want_i = ix.search(q, k=5)
    want_r = Index.load(tmp_path / "ix").reconstruct(np.arange(100))
    errors = _Errors()
    barrier = threading.Barrier(4)

    def searcher():
        barrier.wait()
        for _ in range(30):
            s, i = ix.search(q, k=5, allow=np.arange(0, 5000, 1))
            np.testing.assert_array_equal(i, want_i)

    def looker():
        barrier.wait()
        for _ in range(30):
            assert 4999 in ix and 5000 not in ix
            np.testing.assert_array_equal(ix.reconstruct(np.arange(100)), want_r)
            assert len(ix) == 5000 and ix.ids().shape == (5000,)

    threads = [_start(errors, searcher), _start(errors, searcher), _start(errors, looker),
               _start(errors, looker)]
    for t in threads:
        t.join(60)
    errors.check()


# ---------------------------------------------------------------------------------------
# Searches while another thread adds


@pytest.mark.parametrize("storage,threads", [("f32", None), ("f32", 1), ("i8", None)])
def test_search_during_add_sees_before_or_after_each_add(storage, threads):
    """Batch j holds an exact copy of query j (id C_j) plus filler vectors orthogonal to
    every query. A search therefore finds C_j as top-1 iff batch j is visible, else the
    best base row; since a search sees one snapshot, the visible batches form a prefix
    0..m-1, with m between the adds finished before and started after the search."""
    seed = 202
    nbatch, batch_n = 30, 400
    rng = _rng(seed)
    base = _data(30_000, seed + 1)
    # Mutually orthogonal queries in the first half of the dims: a copy of query i scores
    # ~0 against query j, below the best base row.
    qs = np.zeros((nbatch, DIM), np.float32)
    qs[:, :HALF] = np.linalg.qr(rng.standard_normal((HALF, HALF)))[0][:nbatch]
    ix = Index(DIM, metric="cosine", storage=storage)
    ix.add(base)
    old_best = ix.search(qs, k=1)[1][:, 0].copy()
    batches, copy_ids = [], []
    next_id = 1_000_000
    for j in range(nbatch):
        fill = np.zeros((batch_n - 1, DIM), np.float32)
        fill[:, HALF:] = rng.standard_normal((batch_n - 1, HALF))
        x = np.concatenate([fill[: j % batch_n], qs[j:j + 1] * 3.0, fill[j % batch_n:]])
        ids = np.arange(next_id, next_id + batch_n)
        next_id += batch_n
        batches.append((x, ids))
        copy_ids.append(int(ids[j % batch_n]))
    copy_ids = np.array(copy_ids)
    valid = set(range(30_000)) | set(range(1_000_000, next_id))

    progress = {"started": 0, "done": 0}
    stop = threading.Event()
    errors = _Errors()
    checked = []
    seen_m = set()

    def adder():
        for j, (x, ids) in enumerate(batches):
            progress["started"] = j + 1
            ix.add(x, ids=ids)
            progress["done"] = j + 1
            time.sleep(0.002)
        stop.set()

    def searcher(t):
        n = 0
        while not stop.is_set() or n < 3:
            done_before = progress["done"]
            s, ids = ix.search(qs, k=8, threads=threads)
            started_after = progress["started"]
            top = ids[:, 0]
            hit = top == copy_ids
            m = int(hit.sum())
            ctx = f"seed={seed} thread={t} search#{n}: done_before={done_before} " \
                  f"started_after={started_after} top1={top.tolist()}"
            assert hit[:m].all() and not hit[m:].any(), f"visible batches not a prefix: {ctx}"
            assert (top[m:] == old_best[m:]).all(), f"top-1 neither old best nor the copy: {ctx}"
            assert done_before <= m <= started_after, f"{m} batches visible: {ctx}"
            assert all(int(i) in valid for i in ids.ravel()), f"garbage id: {ctx} {ids}"
            assert (np.diff(s, axis=1) <= 0).all(), f"scores not sorted: {ctx}"
            seen_m.add(m)
            n += 1
        checked.append(n)

    workers = [_start(errors, searcher, t) for t in range(3)]
    adder_t = _start(errors, adder)
    adder_t.join(120)
    stop.set()
    for w in workers:
        w.join(60)
    errors.check()
    assert len(ix) == 30_000 + nbatch * batch_n
    np.testing.assert_array_equal(ix.search(qs, k=1)[1][:, 0], copy_ids)
    assert sum(checked) >= 9, checked
    # Searches started before the first add, so at least two states were observed.
    assert len(seen_m) >= 2, f"seed={seed}: searches only saw {sorted(seen_m)} batches"


def test_search_with_allow_during_add():
    """The allow-list path looks ids up in the id map, which adds modify."""
    seed = 303
    ix = Index(DIM, storage="f16")
    ix.add(_data(3000, seed))
    q = _data(4, seed + 1)
    allow = np.arange(0, 3000, 7)
    want = ix.search(q, k=6, allow=allow)
    stop = threading.Event()
    errors = _Errors()

    def adder():
        for j in range(60):
            ix.add(_data(200, seed + 100 + j))
        stop.set()

    def searcher():
        while not stop.is_set():
            s, i = ix.search(q, k=6, allow=allow)
            np.testing.assert_array_equal(i, want[1], err_msg=f"seed={seed}")
            np.testing.assert_array_equal(s, want[0], err_msg=f"seed={seed}")

    ts = [_start(errors, searcher), _start(errors, searcher), _start(errors, adder)]
    for t in ts:
        t.join(120)
    errors.check()
    assert len(ix) == 3000 + 60 * 200


# ---------------------------------------------------------------------------------------
# Removes while searching


@pytest.mark.parametrize("source", ["memory", "mmap"])
def test_remove_during_search_never_returns_removed_ids(tmp_path, source):
    seed = 404
    n = 20_000
    x = _data(n, seed)
    ix = Index(DIM, storage="i8")
    ix.add(x)
    if source == "mmap":
        ix.save(tmp_path / "ix")
        ix = Index.load(tmp_path / "ix")
    rng = _rng(seed)
    order = rng.permutation(n)[:6000]
    chunks = np.array_split(order, 120)
    # Queries are exact copies of rows that get removed (first in the removal order), so
    # they sit at top-1 until removed.
    qrows = np.concatenate([c[:1] for c in chunks[::10]])
    q = x[qrows]
    allow = np.sort(np.concatenate([order[::3], rng.integers(0, n, 500)]))
    removed_log = []          # appended only after remove() returned
    stop = threading.Event()
    errors = _Errors()

    def remover():
        for c in chunks:
            assert ix.remove(c) == len(c)
            removed_log.append(c)
            time.sleep(0.001)
        stop.set()

    def searcher(t, use_allow):
        it = 0
        while not stop.is_set() or it < 2:
            nlog = len(removed_log)
            gone = np.concatenate(removed_log[:nlog]) if nlog else np.zeros(0, np.int64)
            if use_allow:
                s, ids = ix.search(q, k=20, allow=allow)
            else:
                s, ids = ix.search(q, k=20, threads=2 if t % 2 else None)
            bad = np.isin(ids, gone)
            assert not bad.any(), (f"seed={seed} thread={t} allow={use_allow}: removed ids "
                                   f"{np.unique(ids[bad]).tolist()} returned after remove() returned")
            assert (ids >= 0).all() and (ids < n).all(), f"seed={seed}: bad ids {ids}"
            if use_allow:
                assert np.isin(ids, allow).all(), f"seed={seed}: id outside allow-list"
            for i in gone[-5:]:
                assert int(i) not in ix
            it += 1

    ts = [_start(errors, searcher, 0, False), _start(errors, searcher, 1, False),
          _start(errors, searcher, 2, True), _start(errors, remover)]
    for t in ts:
        t.join(120)
    errors.check()
    assert len(ix) == n - len(order)
    _, ids = ix.search(q, k=50)
    assert not np.isin(ids, order).any()


# ---------------------------------------------------------------------------------------
# Saves while searching / adding


@pytest.mark.parametrize("source", ["memory", "mmap"])
def test_save_during_search(tmp_path, source):
    seed = 505
    x = _data(20_000, seed)
    ix = Index(DIM, storage="i8")
    ix.add(x)
    d = tmp_path / "ix"
    if source == "mmap":
        ix.save(d)
        ix = Index.load(d)
    q = np.concatenate([x[:10], _data(10, seed + 1)])
    want = ix.search(q, k=10)
    stop = threading.Event()
    errors = _Errors()
    saves = []

    def saver():
        for j in range(8):
            ix.save(d if j % 2 == 0 else tmp_path / f"copy{j}")
            saves.append(j)
        stop.set()

    def searcher():
        while not stop.is_set():
            s, i = ix.search(q, k=10)
            np.testing.assert_array_equal(i, want[1], err_msg=f"seed={seed}")
            np.testing.assert_array_equal(s, want[0], err_msg=f"seed={seed}")

    ts = [_start(errors, searcher), _start(errors, searcher), _start(errors, saver)]
    for t in ts:
        t.join(120)
    errors.check()
    assert saves == list(range(8))
    for p in [d] + [tmp_path / f"copy{j}" for j in range(1, 8, 2)]:
        loaded = Index.load(p)
        loaded.verify()
        s, i = loaded.search(q, k=10)
        np.testing.assert_array_equal(i, want[1], err_msg=str(p))
        np.testing.assert_array_equal(s, want[0], err_msg=str(p))


def test_save_during_add_and_remove_saves_a_consistent_state(tmp_path):
    """Each save snapshots the index between two mutations: the saved index holds a prefix
    of the adds with the removals made before that point, never half of a batch."""
    seed = 606
    batch_n, nbatch = 1000, 40
    d = tmp_path / "ix"
    ix = Index(DIM, storage="b1")
    ix.add(_data(batch_n, seed))
    ix.save(d)
    stop = threading.Event()
    errors = _Errors()
    loads = []

    def mutator():
        for j in range(1, nbatch):
            ix.add(_data(batch_n, seed + j), ids=np.arange(j * batch_n, (j + 1) * batch_n))
            ix.remove([j * batch_n - 1])   # last id of the previous batch
        stop.set()

    def saver():
        while not stop.is_set():
            ix.save(d)
            loaded = Index.load(d)
            loaded.verify()
            ids = np.sort(loaded.ids())
            top = int(ids.max())
            nb = top // batch_n + 1
            # Batch nb-1 is the last one in (its last id is removed only after batch nb is
            # added). The removal that follows the add of batch nb-1 may or may not be in.
            last = lambda m: np.arange(batch_n - 1, m * batch_n, batch_n)  # noqa: E731
            after = np.setdiff1d(np.arange(nb * batch_n), last(nb - 1))
            before = np.setdiff1d(np.arange(nb * batch_n), last(max(nb - 2, 0)))
            ok = np.array_equal(ids, after) or np.array_equal(ids, before)
            assert ok, (f"seed={seed}: saved state with {nb} batches and {len(ids)} ids is "
                        f"neither {len(before)} nor {len(after)} ids")
            loads.append(nb)

    ts = [_start(errors, mutator), _start(errors, saver)]
    for t in ts:
        t.join(180)
    errors.check()
    ix.save(d)
    final = Index.load(d)
    final.verify()
    assert len(final) == nbatch * batch_n - (nbatch - 1)
    assert loads, "saver never ran"
