"""`cliprt serve`: the HTTP service (cliprt.serve) on uvicorn."""
from __future__ import annotations

import gc
import os

from ._common import CommandError, byte_size, float_between, int_at_least


def cmd_serve(args) -> int:
    if args.collection and args.index:
        raise CommandError("give --collection or --index, not both")
    for opt, path in (("--collection", args.collection), ("--index", args.index)):
        if path is not None and not os.path.isdir(path):
            raise CommandError(f"{opt} {path!r} is not a directory")
    if args.collection is not None and not os.path.isfile(os.path.join(args.collection, "collection.json")):
        raise CommandError(f"--collection {args.collection!r} is not a cliprt collection (collection.json missing)")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise CommandError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    try:
        import uvicorn
    except ImportError as e:
        raise CommandError(f"cliprt serve needs the 'serve' extra: pip install 'cliprt[serve]' ({e})") from None
    from cliprt.serve import ServeConfig, create_app

    if args.writable and args.read_only:
        raise CommandError("give --writable or --read-only, not both")
    if (args.writable or args.read_only) and args.collection is None:
        raise CommandError("--writable and --read-only are about a collection: give --collection DIR")
    for root in args.thumbnail_root or ():
        if not os.path.isdir(root):
            raise CommandError(f"--thumbnail-root {root!r} is not a directory")
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue=args.queue,
                         timeout_s=args.timeout, max_body_bytes=args.max_body,
                         write="start" if args.writable else "never" if args.read_only else "on-demand",
                         thumbnail_size=args.thumbnail_size,
                         thumbnail_roots=tuple(args.thumbnail_root) if args.thumbnail_root else None)
    app = create_app(args.model, collection=args.collection, index=args.index, config=config, api_key=api_key,
                     device=args.device, cors_origins=args.cors or None)
    # The model, index and metadata are long-lived: moved out of the collector's sight, they
    # are not walked again by every full collection (pauses that land in the latency tail).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve embeddings, search and classification over HTTP")
    p.add_argument("--model", default="default", help="model package directory or 'default'")
    p.add_argument("--collection", metavar="DIR",
                   help="collection to search; POST/DELETE /v1/items change it (the service becomes its writer "
                        "at the first change)")
    p.add_argument("--index", metavar="DIR", help="a bare index to search (results carry no metadata)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int_at_least(0), default=8000)
    p.add_argument("--api-key-env", metavar="VAR",
                   help="require 'Authorization: Bearer $VAR' on every route but /health, /ready, /metrics")
    p.add_argument("--max-batch", type=int_at_least(1), default=32, help="items per tower run")
    p.add_argument("--max-wait-ms", type=float_between(0.0, 10_000.0), default=5.0,
                   help="how long a request waits for others to share its batch")
    p.add_argument("--queue", type=int_at_least(1), default=1024, help="items waiting per tower before 429")
    p.add_argument("--timeout", type=float_between(0.001, 3600.0), default=30.0, help="seconds per request, then 504")
    p.add_argument("--max-body", type=byte_size, default=32 << 20, metavar="N",
                   help="largest request body (K/M/G suffixes), then 413")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for ONNX Runtime's CUDA provider")
    p.add_argument("--cors", action="append", metavar="ORIGIN", help="allow this browser origin (repeatable)")
    p.add_argument("--writable", action="store_true",
                   help="become the collection's writer at start (take its lock, repair a crashed commit)")
    p.add_argument("--read-only", action="store_true", help="refuse adds and deletes (403); never take the lock")
    p.add_argument("--thumbnail-root", action="append", metavar="DIR",
                   help="serve thumbnails only of item files under DIR (repeatable; default: any recorded path)")
    p.add_argument("--thumbnail-size", type=int_at_least(16), default=256, metavar="PX",
                   help="default longest side of item thumbnails")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)
