"""Which binary scoring serves recall best at D = 512?

Compares, on the same sign-bit codes, recall@10 (vs exact float32) after exact rescoring of
the best k*R candidates, for
  hamming   symmetric: query sign bits vs database sign bits (what cliprt's b1 scans),
  asym-f32  asymmetric: float query . sign(x) * ||x|| / sqrt(D),
  asym-4bit asymmetric with the query quantised to 4 bits (what a bit-plane kernel scans),
on "normal" and "clustered" data, for oversampling R in 1..32. Pure numpy (a quality
study, not a speed benchmark); the speed of each scoring follows from its operation count:
hamming = xor + popcount per 64 dims; 4-bit asymmetric = four and + popcount per 64 dims.

    python benchmarks/b1_scoring.py [--n 1000000] [--queries 200] [--out FILE]
"""
from __future__ import annotations

import argparse

import numpy as np

K = 10
RS = (1, 2, 4, 8, 16, 32, 64)


def sample(kind, n, dim, centres, sigma, rng):
    if kind == "normal":
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        x = centres[rng.integers(0, len(centres), n)]
        x = x + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(sigma / np.sqrt(dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def topk_idx(scores, k):
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    centres = rng.standard_normal((1000, a.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lines = [f"b1 scoring study: N={a.n}, D={a.dim}, {a.queries} queries, recall@{K} after exact "
             f"rescoring of k*R candidates", "",
             "| data | scoring | " + " | ".join(f"R={r}" for r in RS) + " |",
             "|---|---|" + "---|" * len(RS)]
    for kind in ("normal", "clustered"):
        x = sample(kind, a.n, a.dim, centres, a.sigma, rng)
        q = sample(kind, a.queries, a.dim, centres, a.sigma, rng)
        exact = q @ x.T
        truth = topk_idx(exact, K)
        signs = np.where(x > 0, 1.0, -1.0).astype(np.float32)
        scale = np.linalg.norm(x, axis=1) / np.sqrt(a.dim)  # cliprt's b1 scale
        lo, hi = q.min(1, keepdims=True), q.max(1, keepdims=True)
        step = (hi - lo) / 15
        q4 = np.round((q - lo) / step) * step + lo
        scorings = {
            "hamming": (np.where(q > 0, 1.0, -1.0).astype(np.float32) @ signs.T) * scale,
            "asym-f32": (q @ signs.T) * scale,
            "asym-4bit": (q4.astype(np.float32) @ signs.T) * scale,
        }
        for name, approx in scorings.items():
            row = []
            for r in RS:
                cand = topk_idx(approx, K * r)
                best = topk_idx(np.take_along_axis(exact, cand, 1), K)
                got = np.take_along_axis(cand, best, 1)
                row.append(np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth)]))
            lines.append(f"| {kind} | {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
            print(lines[-1], flush=True)
        del x, exact, signs, scorings
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
