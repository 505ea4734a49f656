"""One writer, any number of readers, across processes (csrc/include/cliprt/dir_lock.h,
persist.h): a save holds DIR/LOCK; a second writer waits up to its timeout and then gets
cliprt.LockedError naming the holder's pid; a writer whose index is older than the directory
gets cliprt.ConflictError instead of dropping rows; loads take no lock and survive saves
running beside them; temporaries never follow a planted symlink. The long runs (100 writer
trials, 2,000 loads) are benchmarks/stress_writers.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import cliprt
from cliprt import ConflictError, Index, LockedError, _core

DIM = 24


def _rows(n, seed):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _saved(d, n=50, seed=0):
    ix = Index(DIM, storage="f16")
    ix.add(_rows(n, seed))
    ix.save(d)
    return ix


def _child(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


_HOLD_LOCK = """
import sys, time
from cliprt import _core
lock = _core.DirectoryLock(sys.argv[1], 0.0, "index directory")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_second_writer_gets_locked_error_naming_the_holder(tmp_path):
    d = str(tmp_path / "ix")
    ix = _saved(d)
    holder = _child(_HOLD_LOCK, d, "30")
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(os.listdir(d))
        ix.add(_rows(5, 1))
        t0 = time.monotonic()
        with pytest.raises(LockedError) as ei:
            ix.save(d, timeout=0.3)
        assert time.monotonic() - t0 >= 0.3
        e = ei.value
        assert isinstance(e, OSError)
        assert e.pid == holder.pid and str(holder.pid) in str(e)
        assert e.path == os.path.join(os.path.realpath(d), "LOCK")
        assert sorted(os.listdir(d)) == before       # the refused save wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # The holder's death released the lock: the same save goes through.
    ix.save(d, timeout=0)
    assert len(Index.load(d)) == 55


def test_writer_waits_for_the_lock_within_its_timeout(tmp_path):
    d = str(tmp_path / "ix")
    ix = _saved(d)
    holder = _child(_HOLD_LOCK, d, "0.8")
    try:
        assert holder.stdout.readline().strip() == "held"
        ix.add(_rows(5, 1))
        t0 = time.monotonic()
        ix.save(d, timeout=30)
        waited = time.monotonic() - t0
    finally:
        holder.wait()
    assert 0.3 < waited < 29, waited
    assert len(Index.load(d)) == 55


def test_loads_take_no_lock(tmp_path):
    d = str(tmp_path / "ix")
    _saved(d)
    lock = _core.DirectoryLock(d, 0.0, "index directory")
    try:
        assert lock.held
        assert len(Index.load(d)) == 50              # a writer holding the lock does not block readers
        with pytest.raises(LockedError, match="this process"):
            _core.DirectoryLock(d, 0.0, "index directory")
    finally:
        lock.release()
    assert not lock.held
    lock.release()                                  # idempotent


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
def test_bad_timeout(tmp_path, timeout):
    ix = Index(DIM)
    with pytest.raises(ValueError, match="timeout"):
        ix.save(str(tmp_path / "ix"), timeout=timeout)


def test_stale_writer_gets_conflict_error_and_loses_nothing(tmp_path):
    d = str(tmp_path / "ix")
    _saved(d)
    a, b = Index.load(d), Index.load(d)
    a.add(_rows(7, 1), ids=np.arange(100, 107))
    a.save(d)
    b.add(_rows(3, 2), ids=np.arange(200, 203))
    with pytest.raises(ConflictError, match="another writer"):
        b.save(d)
    got = Index.load(d)
    assert len(got) == 57 and all(i in got for i in range(100, 107)) and 200 not in got
    # b saved elsewhere is fine, and b reloaded and redone goes through.
    b.save(str(tmp_path / "other"))
    c = Index.load(d)
    c.add(_rows(3, 2), ids=np.arange(200, 203))
    c.save(d)
    assert len(Index.load(d)) == 60
    # The writer that saved last keeps saving in place.
    c.remove([0])
    c.save(d)
    assert len(Index.load(d)) == 59


def test_planted_symlinks_are_never_written_through(tmp_path):
    d = str(tmp_path / "ix")
    ix = _saved(d)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pid = os.getpid()
    # Every temporary name this process could pick next, plus the older fixed names.
    planted = ["MANIFEST.tmp", "seg-2-1.cseg.tmp"]
    planted += [f"MANIFEST.tmp-{pid}-{n}" for n in range(400)]
    planted += [f"seg-2-1.cseg.tmp-{pid}-{n}" for n in range(400)]
    for name in planted:
        os.symlink(victim, os.path.join(d, name))
    ix.add(_rows(5, 1))
    try:
        ix.save(d)
        saved = True
    except OSError:
        saved = False       # every name taken: refusing is fine, writing through is not
    assert victim.read_text() == "precious"
    assert len(Index.load(d)) == (55 if saved else 50)


def test_lock_file_that_is_a_symlink_is_refused(tmp_path):
    d = str(tmp_path / "ix")
    ix = _saved(d)
    os.unlink(os.path.join(d, "LOCK"))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, os.path.join(d, "LOCK"))
    with pytest.raises(OSError, match="LOCK"):
        ix.save(d)
    assert victim.read_text() == "precious"


_SAVER = """
import sys
import numpy as np
import cliprt
d, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(5)
for i in range(n):
    ix = cliprt.Index.load(d)
    ix.add(rng.standard_normal((3, 24)).astype(np.float32))
    if i % 3 == 2:
        ix.remove(ix.ids()[:2])
    ix.save(d)
print("done", flush=True)
"""


def test_loads_while_another_process_saves(tmp_path):
    d = str(tmp_path / "ix")
    _saved(d, n=40)
    saver = _child(_SAVER, d, "60")
    loads = 0
    try:
        while saver.poll() is None:
            for mmap in (True, False):
                ix = Index.load(d, mmap=mmap)
                ix.verify()
                assert len(ix) >= 40 - 2 * 20
                loads += 1
    finally:
        out, err = saver.communicate(timeout=120)
    assert saver.returncode == 0, err
    assert loads >= 20, loads


_WRITER = """
import sys, time
import numpy as np
import cliprt
d, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
acked = []
for i in range(first, first + n):
    while True:
        ix = cliprt.Index.load(d)
        ix.add(np.full((1, 24), i % 7 + 1, np.float32), ids=[i])
        try:
            ix.save(d, timeout=10)
            break
        except cliprt.ConflictError:
            continue
    acked.append(i)
print(" ".join(map(str, acked)), flush=True)
"""


def test_two_processes_writing_one_directory_lose_nothing(tmp_path):
    d = str(tmp_path / "ix")
    Index(DIM).save(d)
    a = _child(_WRITER, d, "1000", "15")
    b = _child(_WRITER, d, "2000", "15")
    acked = []
    for p in (a, b):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        acked += [int(x) for x in out.split()]
    assert len(acked) == 30
    got = Index.load(d)
    got.verify()
    assert sorted(got.ids().tolist()) == sorted(acked)
