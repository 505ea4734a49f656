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


EXPORT_SOURCES = """sources:
  open_clip:CONFIG   an open_clip config (ViT-B-32, MobileCLIP-S1, RN50, ...); weights from
                     --checkpoint FILE or --pretrained TAG (downloads), else random init (tests only)
  hf:PATH            a Hugging Face CLIP/SigLIP model directory or hub id
  st:PATH            a sentence-transformers model directory or hub id

The package is verified against PyTorch (ONNX Runtime CPU) before it is written: min cosine
>= 0.99999 (fp32), 0.999 (fp16), 0.99 (int8), and batch sizes 1/3/17 agree with one batch.
A refused export exits 1 and leaves nothing at --out. Needs the 'export' extra:
  pip install 'cliprt[export]'"""


def _load_export_source(spec: str, args):
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"source {spec!r} must be open_clip:CONFIG, hf:PATH or st:PATH")
    if kind == "open_clip":
        from cliprt.export.open_clip_family import from_open_clip

        return from_open_clip(rest, checkpoint=args.checkpoint, pretrained=args.pretrained)
    if args.checkpoint or args.pretrained:
        raise ValueError("--checkpoint/--pretrained apply to open_clip: sources only")
    modules = {"hf": ("cliprt.export.hf", "from_hf"),
               "st": ("cliprt.export.sentence_transformers", "from_sentence_transformers")}
    if kind not in modules:
        raise ValueError(f"unknown source kind {kind!r} in {spec!r} (expected open_clip:, hf: or st:)")
    import importlib

    mod_name, fn_name = modules[kind]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise _NotAvailable(f"{kind}: sources are not available in this cliprt ({mod_name} is missing)") from None
        raise
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise _NotAvailable(f"{kind}: sources are not available in this cliprt ({mod_name}.{fn_name} is missing)")
    return fn(rest)


class _NotAvailable(Exception):
    pass


def _cmd_export(args) -> int:
    missing = []
    for mod in ("torch", "onnx", "onnxruntime") + (("open_clip",) if args.source.startswith("open_clip:") else ()):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        print(f"cliprt export: needs the 'export' extra (missing: {', '.join(missing)}); "
              f"install it with: pip install 'cliprt[export]'", file=sys.stderr)
        return 2
    from cliprt.export.pipeline import ExportError, export_package
    from cliprt.export.verify import ParityError

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    if args.checkpoint and args.pretrained:
        print("cliprt export: give --checkpoint or --pretrained, not both", file=sys.stderr)
        return 2
    if args.source.startswith("open_clip:") and not (args.checkpoint or args.pretrained):
        print("cliprt export: warning: no --checkpoint or --pretrained: exporting RANDOMLY INITIALISED weights",
              file=sys.stderr)
    try:
        source = _load_export_source(args.source, args)
        report = export_package(source, args.out, precisions=precisions, verify=not args.no_verify,
                                verify_images=args.verify_images, overwrite=args.overwrite)
    except ParityError as e:
        print(f"cliprt export: {e}", file=sys.stderr)
        return 1
    except (ExportError, _NotAvailable) as e:
        print(f"cliprt export: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dict(report.to_json(), package=args.out), indent=2))
    else:
        print(report.table())
        print(f"wrote {args.out}")
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
    p = sub.add_parser("export", help="export a PyTorch model to a verified cliprt model package",
                       description="Export a PyTorch model (open_clip, Hugging Face, sentence-transformers) to a "
                                   "cliprt model package: ONNX towers, tokenizer, manifest.json.",
                       epilog=EXPORT_SOURCES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help="open_clip:CONFIG, hf:PATH or st:PATH (see below)")
    p.add_argument("--out", required=True, metavar="DIR", help="package directory to create (must not exist)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--checkpoint", metavar="PATH", help="open_clip: local weights file")
    w.add_argument("--pretrained", metavar="TAG", help="open_clip: pretrained tag (downloads the weights)")
    p.add_argument("--precision", default="fp32", metavar="LIST",
                   help="comma-separated variants to write: fp32,fp16,int8 (fp32 always; default fp32)")
    p.add_argument("--verify-images", metavar="FOLDER",
                   help="verify with real images from FOLDER (default: seeded synthetic images)")
    p.add_argument("--no-verify", action="store_true", help="skip the PyTorch/ONNX Runtime parity check")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package at --out")
    p.add_argument("--json", action="store_true", help="print the verification report as JSON")
    p.set_defaults(func=_cmd_export)
    from cliprt import commands

    commands.register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (commands.CommandError, ValueError, OSError, KeyError) as e:
        print(f"cliprt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"cliprt {args.command}: error: a dependency is missing ({e}); "
              "install the 'encode' extra: pip install 'cliprt[encode]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cliprt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
