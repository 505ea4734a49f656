"""kill -9 against `cliprt serve`: clients stream adds (one item per request) to a server
started as a child process, the server is killed with SIGKILL at random moments and started
again; afterwards every answered add must be in the collection with its metadata, no id may
name two items, and the collection must load with its index and metadata agreeing.

Used by tests/test_serve_items.py (a short run) and benchmarks/serve_durability.py (a long one).
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import _cliprt_process  # noqa: E402
import _live_server  # noqa: E402


free_port = _live_server.free_port


def start_server(model: str, collection: str, port: int, *extra: str) -> subprocess.Popen:
    """`cliprt serve` on the cliprt package this process imported (see _cliprt_process)."""
    import cliprt

    package = os.path.realpath(cliprt.__file__)
    hooks = ",".join(sorted({getattr(f, "__module__", "") or "" for f in sys.meta_path}))
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(package))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    argv = ["serve", "--model", model, "--collection", collection, "--port", str(port), "--max-wait-ms", "1", *extra]
    return subprocess.Popen([sys.executable, "-c", _cliprt_process._LAUNCH, package, hooks] + argv, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(p: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if json.loads(r.read()).get("ready"):
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if p.poll() is not None:
            raise AssertionError(f"the server exited with {p.returncode}: {p.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("the server did not become ready")
        time.sleep(0.05)


@dataclasses.dataclass
class Result:
    kills: int
    acknowledged: int
    lost: int
    duplicates: int
    adds_per_s: float
    problems: List[str]


def run(model: str, collection: str, dim: int, *, kills: int, threads: int = 3, window: Tuple[float, float] = (0.2, 1.0),
        seed: int = 0) -> Result:
    """`kills` rounds of: start the server, stream adds from `threads` clients, SIGKILL it
    after a random time in `window` seconds. Then checks the collection (see the module notes)."""
    rng = random.Random(seed)
    acked: Dict[str, Tuple[int, dict]] = {}       # key -> (id, metadata) of every answered add
    ids_acked: Dict[int, List[str]] = {}
    lock = threading.Lock()
    add_seconds = 0.0
    n_added = 0
    counter = [0]
    errors: List[str] = []                        # what went wrong in the client threads
    for round_ in range(kills):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        p = start_server(model, collection, port, "--writable")
        try:
            wait_ready(p, url)
            stop = threading.Event()

            def client(t: int) -> None:
                try:
                    stream(t)
                except BaseException as e:  # noqa: BLE001 - reported by the main thread
                    with lock:
                        errors.append(f"client {t}: {type(e).__name__}: {e}")

            def stream(t: int) -> None:
                nonlocal n_added
                r = np.random.default_rng([seed, round_, t])
                while not stop.is_set():
                    with lock:
                        counter[0] += 1
                        n = counter[0]
                    key = f"r{round_}-t{t}-{n}"
                    meta = {"key": key, "n": n, "round": round_, "tags": ["a", str(n)]}
                    body = json.dumps({"items": [{"key": key, "embedding": r.standard_normal(dim).tolist(),
                                                  "metadata": meta}]}).encode()
                    req = urllib.request.Request(url + "/v1/items", data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(req, timeout=10) as resp:
                            got = json.loads(resp.read())
                    except urllib.error.HTTPError as e:
                        with lock:
                            errors.append(f"an add was refused: {e.code} {e.read()[:500]!r}")
                        return
                    except (urllib.error.URLError, ConnectionError, OSError, http.client.HTTPException):
                        return                      # the server is gone: this add may or may not be there
                    with lock:
                        id_ = got["ids"][0]
                        if got["keys"] != [key]:
                            errors.append(f"the answer to the add of {key!r} names {got['keys']}")
                        acked[key] = (id_, meta)
                        ids_acked.setdefault(id_, []).append(key)
                        n_added += 1

            workers = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(threads)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            time.sleep(rng.uniform(*window))
            os.kill(p.pid, signal.SIGKILL)
            p.wait(30)
            add_seconds += time.perf_counter() - t0
            stop.set()
            for w in workers:
                w.join(30)
            assert not any(w.is_alive() for w in workers), "a client thread hangs"
            assert not errors, errors[:5]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(30)
    lost, duplicates, problems = check(collection, acked, ids_acked)
    return Result(kills, len(acked), lost, duplicates, n_added / max(add_seconds, 1e-9), problems)


def check(collection: str, acked: Dict[str, Tuple[int, dict]], ids_acked: Dict[int, List[str]]):
    """(lost, duplicates, problems): answered adds missing or changed; ids answered for two
    keys or stored for two keys; plus what else is wrong with the collection."""
    from cliprt.collection import Collection

    problems: List[str] = []
    duplicates = sum(1 for keys in ids_acked.values() if len(keys) > 1)
    with Collection.open(collection) as col:                 # loads as a reader
        meta = col.metadata([i for i, _ in acked.values()])
        lost = 0
        for key, (id_, m) in acked.items():
            rec = meta.get(id_)
            if rec is None or rec["key"] != key or rec["meta"] != m:
                lost += 1
        named = col._item_ids()
        stored = col.index.ids()
        if len(np.setdiff1d(named, stored)):
            problems.append(f"items without vectors: {np.setdiff1d(named, stored)[:10].tolist()}")
        if len(np.unique(named)) != len(named):
            duplicates += len(named) - len(np.unique(named))
        col.begin_writing()                                  # the writer's repair of a cut commit
        if not np.array_equal(np.sort(col.index.ids()), np.sort(col._item_ids())):
            problems.append("after the repair, the index and the metadata name different ids")
        after = col.metadata([i for i, _ in acked.values()])
        lost_after = sum(1 for key, (id_, m) in acked.items()
                         if id_ not in after or after[id_]["key"] != key or after[id_]["meta"] != m)
        if lost_after != lost:
            problems.append(f"the repair lost {lost_after - lost} answered items")
    return lost, duplicates, problems
