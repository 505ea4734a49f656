"""Durable adds of `cliprt serve` (POST /v1/items): throughput with concurrent clients, the
cost of a commit, and kill -9 at random moments.

    python benchmarks/serve_durability.py [--kills 60] [--threads 4] [--seconds 10]

1. Throughput: a server in this process (uvicorn in a thread), `--clients` threads each
   adding one item (an embedding and metadata) per request for `--seconds`: adds/s, commits,
   items per commit, time per commit.
2. Durability: `--kills` rounds of starting `cliprt serve --writable` as a child process,
   streaming adds from `--threads` clients and SIGKILLing it after 0.1-1.2 s; then every
   answered add must be in the collection with its metadata (tests/_serve_kill.py).
Uses the tiny random-initialised CLIP of the tests (64-d).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import _serve_kill  # noqa: E402
import _tiny_clip  # noqa: E402


class _Tmp:
    def mktemp(self, name):
        return pathlib.Path(tempfile.mkdtemp(prefix=name))


def throughput(model: str, clients: int, seconds: float) -> dict:
    import uvicorn

    from cliprt.collection import Collection
    from cliprt.encode import Encoder
    from cliprt.serve import ServeConfig, create_app

    enc = Encoder.load(model)
    d = tempfile.mkdtemp(prefix="serve-dur-") + "/col"
    Collection.create(d, model="tiny", dim=enc.dim).close()
    app = create_app(encoder=enc, store=Collection.open(d), config=ServeConfig(max_wait_ms=1, write="start"))
    port = _serve_kill.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/v1/items"
    stop = threading.Event()
    done = [0] * clients
    latencies: list = []

    def client(i):
        rng = np.random.default_rng(i)
        while not stop.is_set():
            body = json.dumps({"items": [{"embedding": rng.standard_normal(enc.dim).tolist(),
                                          "metadata": {"client": i, "n": done[i]}}]}).encode()
            t0 = time.perf_counter()
            req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
            latencies.append(time.perf_counter() - t0)
            done[i] += 1

    writer = app.state.items
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    c0, s0 = writer.commits, writer.commit_seconds
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join(30)
    elapsed = time.perf_counter() - t0
    commits = writer.commits - c0
    out = {"clients": clients, "adds": sum(done), "adds_per_s": sum(done) / elapsed, "commits": commits,
           "items_per_commit": sum(done) / max(commits, 1),
           "commit_ms": 1000 * (writer.commit_seconds - s0) / max(commits, 1),
           "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99))}
    server.should_exit = True
    t.join(10)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=60)
    ap.add_argument("--threads", type=int, default=4, help="clients during the kill rounds")
    ap.add_argument("--clients", type=int, default=8, help="clients of the throughput run")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the throughput run")
    args = ap.parse_args()
    model = _tiny_clip.exported(_Tmp(), precisions=("fp32",))[1]

    for clients in (1, args.clients):
        r = throughput(model, clients, args.seconds)
        print(f"throughput: {r['clients']} clients: {r['adds_per_s']:.0f} adds/s, {r['commits']} commits "
              f"({r['items_per_commit']:.1f} items each, {r['commit_ms']:.1f} ms each), "
              f"latency p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms", flush=True)

    from cliprt.collection import Collection

    d = tempfile.mkdtemp(prefix="serve-kill-") + "/col"
    Collection.create(d, model="tiny", dim=64).close()
    t0 = time.perf_counter()
    res = _serve_kill.run(model, d, 64, kills=args.kills, threads=args.threads, window=(0.1, 1.2), seed=7)
    print(f"\n| kills | acknowledged | lost | duplicates | adds/s (while up) | problems | wall s |")
    print(f"|------:|-------------:|-----:|-----------:|------------------:|----------|-------:|")
    print(f"| {res.kills} | {res.acknowledged} | {res.lost} | {res.duplicates} | {res.adds_per_s:.0f} | "
          f"{'; '.join(res.problems) or 'none'} | {time.perf_counter() - t0:.0f} |")
    return 0 if res.lost == 0 and res.duplicates == 0 and not res.problems else 1


if __name__ == "__main__":
    sys.exit(main())
