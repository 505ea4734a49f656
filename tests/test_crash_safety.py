"""A save killed with SIGKILL at any moment leaves the index loadable, in either the state
before that save or the state after it, never anything in between.

A child process loads the index directory, then repeatedly adds a large batch (200k x 64,
i8 with originals, so a save writes ~66 MB), removes a few old ids and saves in place. The
parent kills it at random moments -- mostly while a save is running, sometimes anywhere
-- and after each kill loads the directory and checks: len(), ids(), search results equal
to those of an in-memory reference at that state, and verify(). Each trial continues from
what the previous kill left behind, so leftovers of killed saves are in play too.

Seed: CLIPRT_CRASH_SEED (printed; default random). Note that SIGKILL does not simulate a
power loss: written pages survive in the page cache, so fsync ordering is not tested.
"""
from __future__ import annotations

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import cliprt
from cliprt import Index

DIM = 64
BASE_N = 5000
BATCH_N = 200_000
MAX_BATCHES = 3        # states 0..3; the directory is reset to the base when full
TRIALS = 16
REMOVE_PER_BATCH = 5
K = 10

CHILD = textwrap.dedent(r"""
    import sys, time
    import numpy as np
    import cliprt
    d, seed = sys.argv[1], int(sys.argv[2])
    BASE_N, BATCH_N, DIM, MAX_BATCHES, REMOVE = (int(v) for v in sys.argv[3:8])
    ix = cliprt.Index.load(d)
    # The state (batches present) follows from the largest stored id.
    ids = ix.ids()
    s = int((ids.max() + 1 - BASE_N) // BATCH_N) if ids.size else 0
    print("loaded", s, flush=True)
    while s < MAX_BATCHES:
        x = np.random.default_rng([seed, s]).standard_normal((BATCH_N, DIM), dtype=np.float32)
        ix.add(x, ids=np.arange(BASE_N + s * BATCH_N, BASE_N + (s + 1) * BATCH_N))
        ix.remove(np.arange(s * REMOVE, (s + 1) * REMOVE))
        print("save-start", s + 1, flush=True)
        t = time.perf_counter()
        ix.save(d)
        print("saved", s + 1, time.perf_counter() - t, flush=True)
        s += 1
""")


def _batch(seed: int, s: int) -> np.ndarray:
    return np.random.default_rng([seed, s]).standard_normal((BATCH_N, DIM), dtype=np.float32)


def _base(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 10_000]).standard_normal((BASE_N, DIM)).astype(np.float32)


class _Child:
    def __init__(self, d: str, seed: int, cwd: str):
        args = [sys.executable, "-c", CHILD, d, str(seed), str(BASE_N), str(BATCH_N), str(DIM),
                str(MAX_BATCHES), str(REMOVE_PER_BATCH)]
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                                  text=True)
        self.lines: "queue.Queue[tuple[float, str]]" = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put((time.monotonic(), line.strip()))
        self.lines.put((time.monotonic(), None))

    def wait_for(self, prefix: str, timeout: float):
        """Next line starting with prefix; None at EOF or timeout."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                _, line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def finish(self, kill: bool):
        if kill and self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        rc = self.p.wait(timeout=60)
        self._reader.join(timeout=10)
        while True:
            try:
                _, line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        err = self.p.stderr.read()
        self.p.stderr.close()
        self.p.stdout.close()
        return rc, err


def _states_possible(prev: int, seen: list[str]) -> set:
    started = [int(ln.split()[1]) for ln in seen if ln.startswith("save-start")]
    done = [int(ln.split()[1]) for ln in seen if ln.startswith("saved")]
    last_started = max(started, default=prev)
    last_done = max(done, default=prev)
    return {last_done, last_started}


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory):
    seed = int(os.environ.get("CLIPRT_CRASH_SEED", random.randrange(2**31)))
    print(f"\ncrash-safety seed: {seed} (set CLIPRT_CRASH_SEED to repeat)")
    root = tmp_path_factory.mktemp("crash")
    base_dir = str(root / "base")
    base = Index(DIM, metric="cosine", storage="i8")
    base.add(_base(seed))
    base.save(base_dir)

    # Queries: the first row of every batch (an exact hit that exists only once the batch
    # is in), a few base rows (some of them removed later) and random vectors.
    rng = np.random.default_rng([seed, 20_000])
    bx = [_batch(seed, s) for s in range(MAX_BATCHES)]
    q = np.concatenate([np.stack([b[0] for b in bx]), _base(seed)[[0, 3, 7, 11, 100]],
                        rng.standard_normal((6, DIM)).astype(np.float32)])
    # Expected results per state s (= batches present), from an in-memory reference.
    ref = Index(DIM, metric="cosine", storage="i8")
    ref.add(_base(seed))
    expected = {0: ref.search(q, k=K)}
    expected_len = {0: BASE_N}
    for s in range(MAX_BATCHES):
        ref.add(bx[s], ids=np.arange(BASE_N + s * BATCH_N, BASE_N + (s + 1) * BATCH_N))
        ref.remove(np.arange(s * REMOVE_PER_BATCH, (s + 1) * REMOVE_PER_BATCH))
        expected[s + 1] = ref.search(q, k=K)
        expected_len[s + 1] = len(ref)
    del ref, bx
    return dict(seed=seed, root=str(root), base_dir=base_dir, q=q, expected=expected,
                expected_len=expected_len)


def _check_state(d: str, possible: set, setup: dict, ctx: str) -> int:
    for mmap in (True, False):
        try:
            ix = Index.load(d, mmap=mmap)
        except Exception as e:  # noqa: BLE001 - report any failure with the context
            raise AssertionError(f"{ctx}: load(mmap={mmap}) failed after kill: {e!r}; "
                                 f"files: {sorted(os.listdir(d))}") from e
        ids = ix.ids()
        s = int((ids.max() + 1 - BASE_N) // BATCH_N) if ids.size else 0
        assert s in possible, f"{ctx}: loaded state {s}, expected one of {sorted(possible)}"
        assert len(ix) == setup["expected_len"][s], f"{ctx}: len {len(ix)} for state {s}"
        want_ids = np.setdiff1d(np.arange(BASE_N + s * BATCH_N), np.arange(s * REMOVE_PER_BATCH))
        np.testing.assert_array_equal(np.sort(ids), want_ids, err_msg=f"{ctx}: ids() for state {s}")
        es, ei = setup["expected"][s]
        gs, gi = ix.search(setup["q"], k=K)
        np.testing.assert_array_equal(gi, ei, err_msg=f"{ctx}: search ids for state {s}")
        np.testing.assert_array_equal(gs, es, err_msg=f"{ctx}: search scores for state {s}")
        for b in range(MAX_BATCHES):   # the marker rows: present iff their batch is
            assert (gi[b, 0] == BASE_N + b * BATCH_N) == (b < s), f"{ctx}: marker {b} in state {s}"
        try:
            ix.verify()
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"{ctx}: verify(mmap={mmap}) failed in state {s}: {e!r}") from e
    return s


def test_sigkill_during_save_leaves_old_or_new_state(crash_setup):
    setup = crash_setup
    seed = setup["seed"]
    rnd = random.Random(seed)
    d = os.path.join(setup["root"], "ix")
    shutil.copytree(setup["base_dir"], d)
    state = 0
    save_times = [0.25]
    outcomes = []
    t_start = time.monotonic()
    for trial in range(TRIALS):
        if state == MAX_BATCHES:
            shutil.rmtree(d)
            shutil.copytree(setup["base_dir"], d)
            state = 0
        ctx = f"seed={seed} trial={trial} start_state={state}"
        child = _Child(d, seed, setup["root"])
        mode = "save" if trial % 4 != 3 else "anytime"
        if mode == "save":
            # Kill at a uniform moment within (a bit more than) a typical save.
            line = child.wait_for("save-start", timeout=60)
            if line is None:
                rc, err = child.finish(kill=True)
                pytest.fail(f"{ctx}: child never started a save (rc={rc}): {child.seen} {err}")
            delay = rnd.uniform(0.0, 1.3 * float(np.median(save_times)))
        else:
            delay = rnd.uniform(0.0, 2.5)
        time.sleep(delay)
        rc, err = child.finish(kill=True)
        ctx += f" mode={mode} delay={delay:.3f}s"
        if rc not in (-signal.SIGKILL, 0):
            pytest.fail(f"{ctx}: child failed by itself (rc={rc}):\n{err}")
        save_times += [float(ln.split()[2]) for ln in child.seen if ln.startswith("saved")]
        possible = _states_possible(state, child.seen)
        new_state = _check_state(d, possible, setup, ctx + f" lines={child.seen}")
        outcomes.append((mode, sorted(possible), new_state))
        state = new_state
    print(f"seed {seed}: outcomes (mode, possible, got): {outcomes}; "
          f"median save {np.median(save_times):.3f}s; {time.monotonic() - t_start:.1f}s")
    # A clean save after all those kills removes every leftover of the killed saves.
    ix = Index.load(d)
    ix.save(d)
    names = sorted(os.listdir(d))
    assert not [n for n in names if ".tmp" in n], names
    manifest = open(os.path.join(d, "MANIFEST")).read()
    # LOCK stays (removing a lock file would let two writers lock two inodes of one name).
    stray = [n for n in names if n not in ("MANIFEST", "LOCK") and n not in manifest]
    assert not stray, f"seed={seed}: files no manifest references: {stray}"
    _check_state(d, {state}, setup, f"seed={seed} after final clean save")


def test_kill_between_data_files_and_manifest(tmp_path):
    """Leftovers of a save that wrote its segment files but never committed (simulated by
    stray seg-*.cseg / *.tmp files): load ignores them and the next save removes them."""
    d = str(tmp_path / "ix")
    ix = Index(DIM, storage="i8")
    ix.add(np.random.default_rng(1).standard_normal((500, DIM)).astype(np.float32))
    ix.save(d)
    seg = [n for n in os.listdir(d) if n.endswith(".cseg")][0]
    shutil.copyfile(os.path.join(d, seg), os.path.join(d, "seg-99-0.cseg"))
    with open(os.path.join(d, "seg-99-1.cseg.tmp"), "wb") as f:
        f.write(b"\0" * 5000)
    with open(os.path.join(d, "MANIFEST.tmp"), "wb") as f:
        f.write(b"cliprt-index 1\ngarbage")
    loaded = Index.load(d)
    loaded.verify()
    assert len(loaded) == 500
    loaded.add(np.ones((1, DIM), np.float32))
    loaded.save(d)
    names = sorted(os.listdir(d))
    assert "seg-99-0.cseg" not in names and "seg-99-1.cseg.tmp" not in names
    assert "MANIFEST.tmp" not in names
    again = Index.load(d)
    again.verify()
    assert len(again) == 501


# ---------------------------------------------------------------------------------------
# Failure injection: a save that fails part-way (an obstacle where it wants to write)
# raises, keeps the previous state loadable and removes what it had written.


def _two_state_index(d):
    rng = np.random.default_rng(77)
    x1 = rng.standard_normal((700, DIM)).astype(np.float32)
    x2 = rng.standard_normal((300, DIM)).astype(np.float32)
    ix = Index(DIM, storage="i8")
    ix.add(x1)
    ix.save(d)                          # generation 1: seg-1-0.cseg
    before = {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)}
    ix.add(x2)
    ix.remove([5])
    return ix, before, np.concatenate([x1[:4], x2[:4]])


# A save names its files past every generation present in the directory and its temporaries
# after its pid and a counter, so an obstacle can only be planted where the name is
# predictable: the deletion file of an existing segment (a directory there makes the rename
# into place fail).
def test_failed_save_keeps_previous_state(tmp_path):
    d = str(tmp_path / "ix")
    ix, before, q = _two_state_index(d)
    obstacle = os.path.join(d, "seg-1-0.cseg.del-2")
    os.mkdir(obstacle)
    with pytest.raises(OSError, match="cannot rename into"):
        ix.save(d)
    os.rmdir(obstacle)
    after = {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)}
    assert after == before, f"failed save left {sorted(set(after) - set(before))} / changed files"
    old = Index.load(d)
    old.verify()
    assert len(old) == 700 and 5 in old
    # The index object is still usable and the next save succeeds.
    assert len(ix) == 999
    want = ix.search(q, k=5)
    ix.save(d)
    new = Index.load(d)
    new.verify()
    assert len(new) == 999 and 5 not in new
    for a, b in zip(want, new.search(q, k=5)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("leftovers", [["seg-1-0.cseg.tmp-4242-0"],
                                       ["seg-1-0.cseg", "seg-1-1.cseg.tmp-4242-1", "MANIFEST.tmp-4242-2"],
                                       ["seg-1-0.cseg.tmp", "MANIFEST.tmp"]],
                         ids=["tmp-only", "renamed-segment", "older-tmp-names"])
def test_retry_after_killed_first_save(tmp_path, leftovers):
    """A first save into a new directory killed before its MANIFEST was written leaves only
    the library's own partial files (observed with SIGKILL: a segment's temporary). There is
    no previous state to keep, so load() reports "not an index"; retrying the save must
    work rather than refuse the directory as foreign."""
    d = tmp_path / "ix"
    d.mkdir()
    for name in leftovers:
        (d / name).write_bytes(b"\0" * 8192)
    with pytest.raises(cliprt.FormatError):
        Index.load(d)
    ix = Index(DIM, storage="i8")
    ix.add(np.random.default_rng(3).standard_normal((50, DIM)).astype(np.float32))
    ix.save(d)
    loaded = Index.load(d)
    loaded.verify()
    assert len(loaded) == 50
    assert not set(leftovers) & set(os.listdir(d)), sorted(os.listdir(d))
