"""``cliprt info`` (what this build contains) and ``cliprt demo`` (the index alone)."""
from __future__ import annotations

from ._common import int_at_least, print_json


def cmd_info(args) -> int:
    import cliprt

    info = cliprt.build_info()
    if args.json:
        print_json(info)
    else:
        for key in ("version", "compiler", "simd_compiled", "simd_available", "simd_selected", "cuda", "cuda_archs"):
            print(f"{key:15s} {info[key]}")
    return 0


def cmd_demo(args) -> int:
    from cliprt.demos import index_demo

    rows = index_demo(n=args.n, dim=args.dim, queries=args.queries, k=args.k, seed=args.seed)
    if args.json:
        print_json(rows)
        return 0
    print(f"cliprt demo: {args.n} clustered vectors, dim {args.dim}, {args.queries} queries, k={args.k}")
    print(f"{'storage':8s} {'add s':>7s} {'save s':>7s} {'load s':>7s} {'ms/query':>9s} {'recall@k':>9s}")
    for r in rows:
        print(f"{r['storage']:8s} {r['add_s']:7.3f} {r['save_s']:7.3f} {r['load_s']:7.3f} "
              f"{r['search_ms_per_query']:9.3f} {r['recall']:9.4f}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="what this build contains (SIMD variants, CUDA)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="index, save, reload and search clustered embeddings")
    p.add_argument("--n", type=int_at_least(1), default=200_000)
    p.add_argument("--dim", type=int_at_least(1), default=512)
    p.add_argument("--queries", type=int_at_least(1), default=100)
    p.add_argument("-k", type=int_at_least(1), default=10)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_demo)
