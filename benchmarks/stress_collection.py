"""`cliprt embed` killed at random points while `cliprt search` runs on the same collection.

    python benchmarks/stress_collection.py --kills 30

A tiny random-initialised CLIP (tests/_tiny_clip.py) is exported once; a folder of small
PNGs is embedded with `cliprt embed --commit-every 3`, and the embedder is killed with
SIGKILL after a random delay, again and again; before each run some files get a new mtime,
so items are re-embedded (their old rows removed, new ids given); the kill comes at a random
moment after the run took the collection's writer lock. Meanwhile another thread
runs `cliprt search` on the collection in a loop. After each kill the collection is opened
as its next writer would (which repairs what a crashed commit left) and checked:

* the index's live ids and the metadata's ids are the same set;
* no id has ever named two different items (over the whole run);
* every stored vector is the encoder's embedding of the file its metadata names.

At the end one run goes to completion and embeds what is missing; a second run must embed
nothing. Prints a table; exits 1 if anything broke.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from stress_writers import cpu_name  # noqa: E402


def build_model(root: str) -> str:
    import _tiny_clip  # noqa: E402
    from cliprt.export.open_clip_family import from_open_clip
    from cliprt.export.pipeline import export_package

    out = os.path.join(root, "tiny")
    export_package(from_open_clip(_tiny_clip.register(), seed=0), out, precisions=("fp32",))
    return out


def make_photos(folder: str, n: int) -> None:
    from PIL import Image

    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = rng.integers(0, 256, (40 + i % 7, 50 + i % 5, 3), dtype=np.uint8)
        Image.fromarray(a).save(os.path.join(folder, f"p{i:03d}.png"))


def cli(*args: str) -> list:
    return [sys.executable, "-m", "cliprt", *args]


class Searcher(threading.Thread):
    """Runs `cliprt search` in a loop until stopped; counts runs and failures."""

    def __init__(self, col: str, model: str):
        super().__init__(daemon=True)
        self.col, self.model = col, model
        self.runs = self.ok = self.not_yet = 0
        self.failures: list = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            r = subprocess.run(cli("search", self.col, "a photo", "--model", self.model, "-k", "5", "--json"),
                               capture_output=True, text=True, timeout=300)
            self.runs += 1
            if r.returncode == 0:
                json.loads(r.stdout)
                self.ok += 1
            elif "no collection" in r.stderr:
                self.not_yet += 1          # before the first embed created it
            else:
                self.failures.append((r.returncode, r.stderr.strip()[-300:]))


def _lock_holder(col: str) -> int:
    """The pid the collection's LOCK names (its last holder; 0 when none), read without
    taking the lock."""
    try:
        with open(os.path.join(col, "LOCK")) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def check(col_path: str, encoder, history: dict) -> list:
    """Problems found in the collection as its next writer sees it (after its repair)."""
    from cliprt.collection import Collection

    problems = []
    col = Collection.open(col_path, timeout=60)
    try:
        col.begin_writing()
        live = set(col.index.ids().tolist())
        rows = list(col._db.execute("SELECT id, key, path FROM items"))
        named = {r[0] for r in rows}
        if live != named:
            problems.append(f"index and metadata disagree: {len(live - named)} rows without metadata, "
                            f"{len(named - live)} items without rows")
        for i, key, _ in rows:
            if history.setdefault(i, key) != key:
                problems.append(f"id {i} named {history[i]!r} and then {key!r}")
        ids = np.array([r[0] for r in rows if r[0] in live], np.int64)
        if len(ids):
            paths = [r[2] for r in rows if r[0] in live]
            want = encoder.encode_images(paths)
            got = col.index.reconstruct(ids)
            bad = np.where(np.abs(got - want).max(axis=1) > 1e-4)[0]
            if len(bad):
                problems.append(f"{len(bad)} vectors are not the embedding of their item's file")
    finally:
        col.close()
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--changed", type=int, default=12, help="files given a new mtime before each run")
    ap.add_argument("--window", type=float, default=0.5, help="kill within this many seconds of the lock")
    args = ap.parse_args()
    import cliprt
    from cliprt.encode import Encoder

    print(f"CPU: {cpu_name()}; SIMD variant: {cliprt.build_info().get('simd_selected', '?')}; "
          f"cliprt {cliprt.__version__}")
    rnd = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="cliprt-stress-col-")
    stats = {"kills": 0, "runs that ended before their kill": 0, "checks": 0, "problems": 0,
             "items re-embedded on purpose": 0}
    history: dict = {}
    try:
        model = build_model(root)
        encoder = Encoder.load(model)
        photos, col = os.path.join(root, "photos"), os.path.join(root, "col")
        make_photos(photos, args.photos)
        names = sorted(os.listdir(photos))
        # One full run, for scale (and the model's first load).
        t0 = time.monotonic()
        subprocess.run(cli("embed", photos, "--model", model, "--index", os.path.join(root, "probe"),
                           "--commit-every", "3", "--no-progress", "--json"), check=True, capture_output=True)
        stats["seconds of one full run"] = round(time.monotonic() - t0, 2)
        searcher = Searcher(col, model)
        searcher.start()
        mtime = 1.6e9
        while stats["kills"] < args.kills:
            for name in rnd.sample(names, args.changed):  # changed files: re-embedded by the next run
                mtime += 1
                os.utime(os.path.join(photos, name), (mtime, mtime))
                stats["items re-embedded on purpose"] += 1
            p = subprocess.Popen(cli("embed", photos, "--model", model, "--index", col, "--commit-every", "3",
                                     "--no-progress", "--json"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            # Kill at a random point of the part that writes: after the run took the writer
            # lock (its pid is then in LOCK), within about the time a full run writes.
            while p.poll() is None and _lock_holder(col) != p.pid:
                time.sleep(0.002)
            try:
                p.wait(timeout=rnd.uniform(0.0, args.window))
                stats["runs that ended before their kill"] += 1
                if p.returncode != 0:
                    stats["problems"] += 1
                    print("embed failed:", p.stderr.read().decode()[-500:], file=sys.stderr)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                stats["kills"] += 1
            p.stderr.close()
            if os.path.exists(os.path.join(col, "collection.json")):
                found = check(col, encoder, history)
                stats["checks"] += 1
                stats["problems"] += len(found)
                for f in found:
                    print(f"after kill {stats['kills']}: {f}", file=sys.stderr)
        # A run to completion embeds what is missing; a second one finds nothing to do.
        r1 = json.loads(subprocess.run(cli("embed", photos, "--model", model, "--index", col, "--json"),
                                       check=True, capture_output=True, text=True).stdout)
        r2 = json.loads(subprocess.run(cli("embed", photos, "--model", model, "--index", col, "--json"),
                                       check=True, capture_output=True, text=True).stdout)
        found = check(col, encoder, history)
        stats["problems"] += len(found)
        for f in found:
            print(f"final: {f}", file=sys.stderr)
        from cliprt.collection import Collection

        final = Collection.open(col)
        keys = [r[0] for r in final._db.execute("SELECT key FROM items")]
        complete = sorted(os.path.basename(k) for k in keys) == names and len(final) == len(names)
        final.close()
        searcher.stop.set()
        searcher.join(timeout=600)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stats["final run: embedded"] = r1["embedded"]
    stats["rerun: embedded / skipped"] = f"{r2['embedded']} / {r2['skipped']}"
    stats["every item exactly once at the end"] = complete
    stats["ids handed out over the run"] = len(history)
    stats["searches run / ok / before creation / failed"] = (
        f"{searcher.runs} / {searcher.ok} / {searcher.not_yet} / {len(searcher.failures)}")
    for code, err in searcher.failures[:5]:
        print(f"search failed ({code}): {err}", file=sys.stderr)
    print("\n| embed killed at random points, search beside it | count |\n|---|---|")
    for k, v in stats.items():
        print(f"| {k} | {v} |")
    broken = stats["problems"] + len(searcher.failures) + (r2["embedded"] != 0) + (not complete)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
