"""The `cliprt` command line."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np


def _cmd_info(args) -> int:
    import cliprt

    info = cliprt.build_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key in ("version", "compiler", "simd_compiled", "simd_available", "simd_selected", "cuda", "cuda_archs"):
            print(f"{key:15s} {info[key]}")
    return 0


def _clustered(rng, n: int, dim: int, centers: np.ndarray) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), n)]
    x = x + rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cmd_demo(args) -> int:
    """Builds an index per storage over clustered embeddings, saves, reloads memory-mapped,
    and reports search latency and recall against exact float32 search."""
    import cliprt

    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((max(1, args.n // 1000), args.dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    data = _clustered(rng, args.n, args.dim, centers)
    queries = _clustered(rng, args.queries, args.dim, centers)
    truth = np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, : args.k]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for storage in ("f32", "bf16", "i8", "b1"):
            index = cliprt.Index(args.dim, metric="cosine", storage=storage)
            t0 = time.perf_counter()
            index.add(data)
            t_add = time.perf_counter() - t0
            path = f"{tmp}/{storage}"
            t0 = time.perf_counter()
            index.save(path)
            t_save = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = cliprt.Index.load(path, mmap=True)
            t_load = time.perf_counter() - t0
            loaded.search(queries[:1], args.k)
            t0 = time.perf_counter()
            _, ids = loaded.search(queries, args.k)
            t_search = time.perf_counter() - t0
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, truth)])
            rows.append({"storage": storage, "add_s": t_add, "save_s": t_save, "load_s": t_load,
                         "search_ms_per_query": 1e3 * t_search / args.queries, "recall": float(recall)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"cliprt demo: {args.n} clustered vectors, dim {args.dim}, {args.queries} queries, k={args.k}")
    print(f"{'storage':8s} {'add s':>7s} {'save s':>7s} {'load s':>7s} {'ms/query':>9s} {'recall@k':>9s}")
    for r in rows:
        print(f"{r['storage']:8s} {r['add_s']:7.3f} {r['save_s']:7.3f} {r['load_s']:7.3f} "
              f"{r['search_ms_per_query']:9.3f} {r['recall']:9.4f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cliprt", description="cliprt: CLIP-style embedding engine")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="what this build contains (SIMD variants, CUDA)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="index, save, reload and search clustered embeddings")
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, KeyError) as e:
        print(f"cliprt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
