"""Load on `cliprt serve`: concurrent clients on loopback against a real uvicorn server (a
subprocess running this checkout's cliprt), every scenario bounded in requests and seconds.

  (a) text embeddings, one text per request: dynamic batching (--max-batch 32, --max-wait-ms 5)
      against batch-1 serving (--max-batch 1 --max-wait-ms 0), same clients, same run;
  (b) image embeddings, one base64 PNG per request, both servers;
  (c) search on a 100,000-item i8 collection with metadata (built once from random unit
      vectors through the Collection API, cached), queries as embeddings and as text;
  (d) parity: /v1/search gives the ids and scores (within 1e-6) that Retriever gives in process.

Reports QPS, p50/p99 latency and errors per scenario as a markdown table naming the CPU.

    python benchmarks/serve_load.py --out benchmarks/results/serve_load.md
    python benchmarks/serve_load.py --text-model ~/.cache/cliprt/models/default   # a second text model
    python benchmarks/serve_load.py --quick                                          # smoke run

The search model is the tiny random-initialised CLIP of the tests (64-d; exported once into
the cache directory): search latency depends on the index, not on the model. Client and
server share the machine's cores, so the numbers are those of a loaded box, not a server
alone.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import glob
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from _machine import cpu_name  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "python"))
sys.path.insert(0, os.path.join(REPO, "tests"))

# The server runs this checkout's python/ tree, ahead of any installed cliprt (an editable
# install's import hook included).
_SERVER_BOOT = (
    "import sys, runpy; sys.path.insert(0, sys.argv.pop(1)); "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'cliprt' not in type(f).__module__]; "
    "sys.argv[0] = 'cliprt'; runpy.run_module('cliprt', run_name='__main__', alter_sys=True)")

def _cliprt_command() -> List[str]:
    """`cliprt` from this checkout's python/ when its native core is built there (a
    development tree), else the installed cliprt."""
    if glob.glob(os.path.join(REPO, "python", "cliprt", "_core*.so")):
        return [sys.executable, "-c", _SERVER_BOOT, os.path.join(REPO, "python")]
    return [sys.executable, "-m", "cliprt"]


WORDS = ("dog cat bird car tree house river mountain red blue green small large old new photo painting "
         "drawing street beach forest city night morning snow rain boat train plane flower chair table").split()


# ------------------------------------------------------------------------------ setup


def tiny_model(cache: str) -> str:
    """The tests' tiny CLIP (random weights, seed 0), exported once into `cache`."""
    out = os.path.join(cache, "tiny-clip")
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        import _tiny_clip
        from cliprt.export.open_clip_family import from_open_clip
        from cliprt.export.pipeline import export_package

        export_package(from_open_clip(_tiny_clip.register(), seed=0), out, precisions=("fp32",))
    return out


def search_collection(cache: str, dim: int, rows: int) -> str:
    """`rows` random unit vectors with metadata in an i8 collection, built once."""
    from cliprt.collection import Collection

    path = os.path.join(cache, f"col-i8-{dim}d-{rows}")
    if os.path.isfile(os.path.join(path, "collection.json")):
        return path
    rng = np.random.default_rng(1234)
    tmp = path + f".building-{os.getpid()}"
    t0 = time.perf_counter()
    with Collection.create(tmp, model="serve-load", dim=dim, storage="i8") as col:
        for start in range(0, rows, 20_000):
            n = min(20_000, rows - start)
            emb = rng.standard_normal((n, dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            col.add(emb, [{"key": f"item{i}", "path": f"/data/{WORDS[i % len(WORDS)]}/{i}.jpg",
                           "meta": {"label": WORDS[i % len(WORDS)], "n": i}} for i in range(start, start + n)])
        col.commit()
    os.replace(tmp, path)
    print(f"  built {rows:,}-item i8 collection in {time.perf_counter() - t0:.1f} s: {path}", file=sys.stderr)
    return path


def png_b64(rng, size=64) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`cliprt serve` in a subprocess, ready when /ready says so."""

    def __init__(self, model: str, collection: Optional[str] = None, max_batch: int = 32, max_wait_ms: float = 5.0,
                 queue: int = 4096):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = _cliprt_command() + ["serve", "--model", model,
               "--port", str(self.port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
               "--queue", str(queue), "--timeout", "60"]
        if collection:
            cmd += ["--collection", collection]
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ)
        if SERVER_PATH:
            env["PYTHONPATH"] = os.pathsep.join([SERVER_PATH] + [x for x in [env.get("PYTHONPATH")] if x])
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self):
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.log.read().decode()[-3000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready after 180 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------ load
class RawConnection:
    """A keep-alive HTTP/1.1 connection on asyncio streams: the least client-side CPU per
    request (client and server share the cores, and httpx's async pool costs a few ms of
    CPU per request at 32 connections, which the server would lose)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length, close = None, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length is None:
            raise ConnectionError("response without Content-Length")
        data = await self.reader.readexactly(length)
        if close:
            await self.aclose()
        return status, data

    async def aclose(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _load(url: str, path: str, make_body: Callable[[int], Dict[str, Any]], clients: int, requests: int,
                seconds: float, warmup: int, kind: str) -> Dict[str, Any]:
    import httpx

    host, port = url.rsplit("/", 1)[1].split(":")
    lat: List[float] = []
    errors: Dict[str, int] = {}
    if kind == "httpx":
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        client = httpx.AsyncClient(base_url=url, limits=limits, timeout=60)

        async def post(_conn, body: bytes):
            r = await client.post(path, content=body, headers={"content-type": "application/json"})
            return r.status_code, r.content
        conns = [None] * clients
    else:
        conns = [RawConnection(host, int(port)) for _ in range(clients)]

        async def post(conn, body: bytes):
            return await conn.post(path, body)
    try:
        for i in range(warmup):                      # the first batches pay for thread pools and caches
            await post(conns[0], json.dumps(make_body(-1 - i)).encode())
        counter = iter(range(requests))
        t_start = time.perf_counter()
        deadline = t_start + seconds

        async def worker(conn):
            while time.perf_counter() < deadline:
                i = next(counter, None)
                if i is None:
                    return
                body = json.dumps(make_body(i)).encode()
                t0 = time.perf_counter()
                try:
                    status, _ = await post(conn, body)
                    ok, kind_ = status == 200, str(status)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, httpx.HTTPError) as e:
                    ok, kind_ = False, type(e).__name__
                    if conn is not None:
                        await conn.aclose()
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors[kind_] = errors.get(kind_, 0) + 1

        await asyncio.gather(*(worker(c) for c in conns))
        wall = time.perf_counter() - t_start
    finally:
        if kind == "httpx":
            await client.aclose()
        else:
            for c in conns:
                await c.aclose()
    lat_ms = np.array(lat) * 1000.0
    return {"requests": len(lat) + sum(errors.values()), "ok": len(lat), "errors": errors, "wall_s": wall,
            "qps": len(lat) / wall if wall > 0 else 0.0,
            "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat) else float("nan")}


CLIENT = "raw"
SERVER_PATH = ""


def uvicorn_stack() -> str:
    """What uvicorn picks in the server ("auto" loop and http): uvloop and httptools when importable."""
    code = ("import importlib.util as u; print('+'.join(['uvloop' if u.find_spec('uvloop') else 'asyncio', "
            "'httptools' if u.find_spec('httptools') else 'h11']))")
    env = dict(os.environ)
    if SERVER_PATH:
        env["PYTHONPATH"] = os.pathsep.join([SERVER_PATH] + [x for x in [env.get("PYTHONPATH")] if x])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()


def load(url, path, make_body, *, clients, requests, seconds, warmup=4, kind=None) -> Dict[str, Any]:
    return asyncio.run(_load(url, path, make_body, clients, requests, seconds, warmup, kind or CLIENT))


def batches(url: str) -> Dict[str, float]:
    """Mean items per batch per batcher, from /metrics."""
    import httpx

    sums: Dict[str, float] = {}
    counts: Dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            if line.startswith("cliprt_batch_size" + suffix + "{"):
                name = line.split('batcher="', 1)[1].split('"', 1)[0]
                into[name] = float(line.rsplit(" ", 1)[1])
    return {k: sums[k] / counts[k] for k in sums if counts.get(k)}


# ------------------------------------------------------------------------------ scenarios
def text_body(rng_seed: int):
    def make(i: int) -> Dict[str, Any]:
        r = np.random.default_rng(rng_seed + 1_000_003 * (i + 10))
        return {"input": " ".join(r.choice(WORDS, size=int(r.integers(3, 12))))}
    return make


def run_parity(url: str, model: str, collection: str, queries: int) -> Dict[str, Any]:
    """The server's top-k against Retriever in process, for embedding and text queries."""
    import httpx

    from cliprt.collection import Collection
    from cliprt.encode import Encoder
    from cliprt.retrieval import Retriever

    enc = Encoder.load(model)
    col = Collection.open(collection)
    retr = Retriever(enc, col)
    rng = np.random.default_rng(99)
    worst, mismatched, checked = 0.0, 0, 0
    try:
        for i in range(queries):
            if i % 2 == 0:
                q = rng.standard_normal(enc.dim).astype(np.float32)
                q /= np.linalg.norm(q)
                body = {"query": {"embedding": q.tolist()}, "k": 10}
                want = retr.search_vector(q, k=10)
            else:
                text = " ".join(rng.choice(WORDS, size=4)) + (" -" + str(rng.choice(WORDS)) if i % 4 == 1 else "")
                body = {"query": {"text": text}, "k": 10}
                want = retr.search_text(text, k=10)
            got = httpx.post(url + "/v1/search", json=body, timeout=60).json()["results"]
            checked += 1
            ids_same = [h["id"] for h in got] == [h.id for h in want]
            diff = max(abs(g["score"] - w.score) for g, w in zip(got, want)) if ids_same else float("inf")
            worst = max(worst, diff)
            if not ids_same or diff > 1e-6 or got[0]["metadata"] != want[0].metadata:
                mismatched += 1
    finally:
        col.close()
    return {"queries": checked, "mismatched": mismatched, "max_score_diff": worst}


def fmt_errors(e: Dict[str, int]) -> str:
    return "0" if not e else ", ".join(f"{v} x {k}" for k, v in sorted(e.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="per scenario at most")
    p.add_argument("--requests", type=int, default=20_000, help="per scenario at most")
    p.add_argument("--rows", type=int, default=100_000, help="search collection size")
    p.add_argument("--repeats", type=int, default=3, help="runs per scenario; the table gives medians")
    p.add_argument("--parity-queries", type=int, default=40)
    p.add_argument("--text-model", action="append", default=[],
                   help="another model package for the text-embedding comparison (repeatable)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cliprt-serve-load"))
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="raw: keep-alive HTTP/1.1 on asyncio streams (least client CPU); httpx: httpx.AsyncClient")
    p.add_argument("--server-path", default="", metavar="DIR",
                   help="put DIR first on the server's PYTHONPATH (e.g. uvloop and httptools installed with --target)")
    p.add_argument("--quick", action="store_true", help="smoke run: 10,000 rows, 2 s, 1 repeat")
    p.add_argument("--out", help="write the markdown report here")
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.seconds, args.repeats, args.parity_queries = 10_000, 2.0, 1, 10
    os.makedirs(args.cache, exist_ok=True)
    global CLIENT, SERVER_PATH
    CLIENT, SERVER_PATH = args.client, args.server_path

    tiny = tiny_model(args.cache)
    from cliprt.encode import Encoder

    dim = Encoder.load(tiny).dim
    col = search_collection(args.cache, dim, args.rows)
    kw = dict(clients=args.clients, requests=args.requests, seconds=args.seconds)
    rng = np.random.default_rng(7)
    images = [png_b64(rng) for _ in range(64)]
    qvecs = rng.standard_normal((512, dim)).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    qlist = [v.tolist() for v in qvecs]

    rows: List[Dict[str, Any]] = []

    def scenario(name: str, server_cfg: str, model_name: str, url: str, path: str, make_body, *, extra=None):
        runs = []
        for rep in range(args.repeats):
            res = load(url, path, make_body, **kw)
            runs.append(res)
            print(f"  {name} [{server_cfg}] run {rep + 1}: {res['qps']:.0f} QPS, p50 {res['p50_ms']:.1f} ms, "
                  f"p99 {res['p99_ms']:.1f} ms, errors {fmt_errors(res['errors'])}", file=sys.stderr)
        errors: Dict[str, int] = {}
        for r in runs:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        row = {"scenario": name, "server": server_cfg, "model": model_name, "runs": runs,
               "requests": sum(r["requests"] for r in runs), "errors": errors,
               "qps": statistics.median(r["qps"] for r in runs),
               "p50_ms": statistics.median(r["p50_ms"] for r in runs),
               "p99_ms": statistics.median(r["p99_ms"] for r in runs)}
        row.update(extra or {})
        rows.append(row)
        return row

    dyn, one = "dynamic (32, 5 ms)", "batch-1 (1, 0 ms)"
    text_models = [("tiny CLIP (64-d)", tiny)] + [(_model_label(m), m) for m in args.text_model]
    speedups = {}
    # (a) text and (b) images: the two servers alternate, so drift on the shared box hits both
    for label, model in text_models:
        with_images = model == tiny
        results = {}
        for cfg, mb, mw in ((dyn, 32, 5.0), (one, 1, 0.0)):
            with Server(model, max_batch=mb, max_wait_ms=mw) as srv:
                print(f"{label}, {cfg}", file=sys.stderr)
                first = len(rows)
                results[cfg] = scenario("text embeddings, 1 text/request", cfg, label, srv.url, "/v1/embeddings",
                                        text_body(0))
                if with_images:
                    scenario("image embeddings, 1 PNG/request", cfg, label, srv.url, "/v1/embeddings",
                             lambda i: {"input": [images[i % len(images)]], "modality": "image"})
                mean = batches(srv.url)
                for r in rows[first:]:
                    r["mean_batch"] = mean.get("text" if r["scenario"].startswith("text") else "image")
        speedups[label] = results[dyn]["qps"] / results[one]["qps"] if results[one]["qps"] else float("nan")

    # (c) search and (d) parity
    with Server(tiny, collection=col) as srv:
        print(f"search, {args.rows:,} items i8", file=sys.stderr)
        name = f"search {args.rows:,} i8, embedding query, k=10"
        scenario(name, dyn, "tiny CLIP (64-d)", srv.url, "/v1/search",
                 lambda i: {"query": {"embedding": qlist[i % len(qlist)]}, "k": 10})
        scenario(f"search {args.rows:,} i8, text query, k=10", dyn, "tiny CLIP (64-d)", srv.url, "/v1/search",
                 lambda i: {"query": {"text": " ".join(WORDS[(i + j * 7) % len(WORDS)] for j in range(3))}, "k": 10})
        mean = batches(srv.url)
        for r in rows[-2:]:
            r["mean_batch"] = mean.get("search")
        parity = run_parity(srv.url, tiny, col, args.parity_queries)
    print(f"parity: {parity}", file=sys.stderr)

    report = render(rows, speedups, parity, args)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "speedups": speedups, "parity": parity}, f, indent=2, default=str)
    return 0


def _model_label(path: str) -> str:
    try:
        from cliprt.encode import Encoder

        enc = Encoder.load(path)
        return f"{enc.manifest.name} ({enc.dim}-d)"
    except Exception:  # noqa: BLE001
        return os.path.basename(os.path.normpath(path))


def _simd_variant() -> str:
    import cliprt

    return str(cliprt.build_info().get("simd_selected", "?"))


def render(rows, speedups, parity, args) -> str:
    search = [r for r in rows if r["scenario"].startswith("search")]
    lines = [
        "# cliprt serve under load",
        "",
        f"`python benchmarks/serve_load.py` on {cpu_name()} ({os.cpu_count()} cores, index scans "
        f"{_simd_variant()}), "
        f"{datetime.date.today().isoformat()}; {args.clients} concurrent clients "
        f"({'keep-alive HTTP/1.1 on asyncio streams' if args.client == 'raw' else 'httpx.AsyncClient'}, one process) "
        f"on loopback against `cliprt serve` (uvicorn on {uvicorn_stack()}, one worker process) on the same machine; each scenario "
        f"at most {args.requests:,} requests or {args.seconds:g} s, {args.repeats} runs, medians shown; "
        "errors summed over the runs. Server: dynamic = `--max-batch 32 --max-wait-ms 5` (the defaults), "
        "batch-1 = `--max-batch 1 --max-wait-ms 0`.",
        "",
        "| scenario | model | server | requests | QPS | p50 ms | p99 ms | mean batch | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        mb = r.get("mean_batch")
        lines.append(f"| {r['scenario']} | {r['model']} | {r['server']} | {r['requests']:,} | {r['qps']:.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {'-' if mb is None else f'{mb:.1f}'} | "
                     f"{fmt_errors(r['errors'])} |")
    total_errors = sum(sum(r["errors"].values()) for r in rows)
    lines += ["", "Targets:", ""]
    lines.append(f"- errors: {total_errors} in {sum(r['requests'] for r in rows):,} requests "
                 f"({'met' if total_errors == 0 else 'MISSED'})")
    for label, s in speedups.items():
        lines.append(f"- dynamic batching over batch-1, text, {label}: {s:.2f}x "
                     f"({'met' if s >= 2 else 'MISSED'}: target >= 2x)")
    for r in search:
        lines.append(f"- {r['scenario']}: p99 {r['p99_ms']:.1f} ms ({'met' if r['p99_ms'] < 50 else 'MISSED'}: "
                     "target < 50 ms)")
    lines.append(f"- /v1/search against Retriever in process: {parity['queries']} queries (embedding and text, "
                 f"k=10), {parity['mismatched']} differ in ids, metadata or scores beyond 1e-6; largest score "
                 f"difference {parity['max_score_diff']:.2g}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
