"""Many processes on one index directory (the long runs behind tests/test_writers.py).

    python benchmarks/stress_writers.py --trials 100 --loads 2000

1. Writers: per trial, two processes each run load -> add one row -> save, several times,
   reloading after a ConflictError; every row whose save returned is "acknowledged". After
   both end, the directory must load, verify, and hold exactly the acknowledged rows.
2. Readers: one process saves in a loop (adds, removes, new segments) while this one loads
   the directory again and again (mmap and read modes, checksums verified); every load must
   succeed and see a consistent index.
Prints a table of counts; exits 1 if anything broke.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

import cliprt
from cliprt import Index
from _machine import cpu_name  # noqa: E402

DIM = 24

_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import cliprt
    d, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conflicts = locked = 0
    for i in range(first, first + n):
        while True:
            ix = cliprt.Index.load(d)
            ix.add(np.full((1, 24), i % 5 + 1, np.float32), ids=[i])
            try:
                ix.save(d, timeout=0.05)
                break
            except cliprt.ConflictError:
                conflicts += 1
            except cliprt.LockedError:
                locked += 1
        print("ack", i, flush=True)
    print("stats", conflicts, locked, flush=True)
""")

_SAVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import cliprt
    d, seconds = sys.argv[1], float(sys.argv[2])
    rng = np.random.default_rng(1)
    ix = cliprt.Index.load(d)
    saves, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        ix.add(rng.standard_normal((int(rng.integers(1, 40)), 24)).astype(np.float32))
        if saves % 2:
            ids = ix.ids()
            ix.remove(ids[rng.choice(len(ids), size=min(len(ids) // 4, 30), replace=False)])
        ix.save(d)
        saves += 1
    print("saves", saves, flush=True)
""")




def writers(trials: int, per_process: int, root: str) -> dict:
    out = {"trials": trials, "unloadable": 0, "lost acknowledged rows": 0, "unexpected rows": 0,
           "writer crashes": 0, "conflicts retried": 0, "lock waits refused": 0, "acknowledged rows": 0}
    for t in range(trials):
        d = os.path.join(root, f"w{t}")
        Index(DIM).save(d)
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, d, str(base), str(per_process)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for base in (1000, 2000)]
        acked = set()
        for p in procs:
            stdout, stderr = p.communicate(timeout=600)
            if p.returncode != 0:
                out["writer crashes"] += 1
                print(f"trial {t}: writer failed: {stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            for line in stdout.splitlines():
                f = line.split()
                if f[0] == "ack":
                    acked.add(int(f[1]))
                elif f[0] == "stats":
                    out["conflicts retried"] += int(f[1])
                    out["lock waits refused"] += int(f[2])
        out["acknowledged rows"] += len(acked)
        try:
            ix = Index.load(d)
            ix.verify()
            got = set(ix.ids().tolist())
        except Exception as e:         # noqa: BLE001 - counted, and shown
            out["unloadable"] += 1
            print(f"trial {t}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        out["lost acknowledged rows"] += len(acked - got)
        out["unexpected rows"] += len(got - acked)
        shutil.rmtree(d)
    return out


def readers(loads: int, root: str) -> dict:
    d = os.path.join(root, "r")
    ix = Index(DIM, storage="i8")
    ix.add(np.random.default_rng(0).standard_normal((500, DIM)).astype(np.float32))
    ix.save(d)
    saver = subprocess.Popen([sys.executable, "-c", _SAVER, d, "3600"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out = {"loads": 0, "errors": 0, "saves meanwhile": 0}
    errors = {}
    t0 = time.monotonic()
    try:
        while _generation(d) < 3:          # the saver is running
            time.sleep(0.01)
        for i in range(loads):
            try:
                got = Index.load(d, mmap=bool(i % 2))
                got.verify()
                if len(got) != len(got.ids()) or len(got) == 0:
                    raise AssertionError(f"inconsistent: {len(got)} rows, {len(got.ids())} ids")
            except Exception as e:     # noqa: BLE001 - counted, and shown
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                out["errors"] += 1
                if out["errors"] <= 5:
                    print(f"load {i}: {type(e).__name__}: {e}", file=sys.stderr)
            out["loads"] += 1
    finally:
        saver.terminate()
        stdout, _ = saver.communicate(timeout=60)
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["errors by type"] = errors or "-"
    out["saves meanwhile"] = _generation(d) - 1
    return out


def _generation(d: str) -> int:
    words = open(os.path.join(d, "MANIFEST")).read().split()
    return int(words[words.index("generation") + 1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--per-process", type=int, default=5, help="acknowledged saves each writer makes per trial")
    ap.add_argument("--loads", type=int, default=2000)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()}; SIMD variant: {cliprt.build_info().get('simd_selected', '?')}; "
          f"cliprt {cliprt.__version__}")
    root = tempfile.mkdtemp(prefix="cliprt-stress-")
    try:
        t0 = time.monotonic()
        w = writers(args.trials, args.per_process, root)
        w["seconds"] = round(time.monotonic() - t0, 1)
        r = readers(args.loads, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n| two writers, one directory | count |\n|---|---|")
    for k, v in w.items():
        print(f"| {k} | {v} |")
    print("\n| loads while another process saves | count |\n|---|---|")
    for k, v in r.items():
        print(f"| {k} | {v} |")
    broken = w["unloadable"] + w["lost acknowledged rows"] + w["unexpected rows"] + w["writer crashes"] + r["errors"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
