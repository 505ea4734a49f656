"""The model-facing commands: models, embed, search, classify, eval, bench, quickstart.

Each parses its arguments, calls the library (``cliprt.registry``, ``cliprt.ingestion``,
``cliprt.retrieval``, ``cliprt.zeroshot``, ``cliprt.evaluate``, ``cliprt.bench``,
``cliprt.demos``) and prints a readable table, or JSON with ``--json``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from cliprt.index import STORAGES

from ._common import (CommandError, byte_size, float_between, int_at_least, load_encoder, print_json, read_lines,
                      regular_file)

PRECISIONS = ("fp32", "fp16", "int8")


# ------------------------------------------------------------------------------ models
def cmd_models(args) -> int:
    from cliprt.registry import build_default, default_model_dir, is_built

    if args.models_command == "build-default":
        if args.holdout_every is not None and args.out is None:
            raise CommandError("--holdout-every builds an evaluation variant: give it its own --out DIR")
        path = build_default(args.out, force=args.force, holdout_every=args.holdout_every, progress=not args.json)
        if args.json:
            print_json({"path": path})
        else:
            print(f"default model ready at {path}")
        return 0
    path = default_model_dir()
    built = is_built(path)
    info: Dict[str, Any] = {"name": "default", "path": path, "built": built}
    if built:
        from cliprt.models import ModelPackage

        m = ModelPackage.load(path).manifest
        info.update(family=m.family, dim=m.embed_dim, towers=list(m.towers), description=m.description)
    if args.json:
        print_json([info])
    else:
        print(f"{'name':10s} {'built':6s} path")
        print(f"{info['name']:10s} {'yes' if built else 'no':6s} {path}")
        if built:
            print(f"  {info['description']}")
    return 0


# ------------------------------------------------------------------------------ embed
def cmd_embed(args) -> int:
    from cliprt.collection import Collection

    for src in args.src:
        if not os.path.exists(src):
            raise CommandError(f"source {src!r} does not exist")
    if os.path.exists(args.index) and not os.path.isdir(args.index):
        raise CommandError(f"--index {args.index!r} is a file, not a collection directory")
    enc = load_encoder(args.model, args)
    if "image" not in enc.manifest.towers:
        raise CommandError(f"model {args.model!r} has no image tower")
    model = args.model if args.model == "default" else os.path.abspath(args.model)
    col = Collection.open_or_create(args.index, model=model, dim=enc.dim, storage=args.storage or "f32")
    if args.storage and col.config["storage"] != args.storage:
        col.close()
        raise CommandError(f"collection {args.index!r} stores {col.config['storage']}, not {args.storage} "
                           "(--storage applies to a new collection)")
    try:
        report = col.ingest(args.src, enc, batch_size=args.batch_size, commit_every=args.commit_every,
                            retry_failed=args.retry_failed, progress=not args.json and not args.no_progress,
                            max_item_bytes=args.max_item_bytes)
    finally:
        col.close()
    summary = report.to_json()
    if args.json:
        print_json(summary)
        return 0
    print(f"embedded {report.embedded}, skipped {report.skipped} already done, failed {report.failed} "
          f"— {summary['images_per_s']} images/s; collection {summary['index']} holds {report.total}")
    for f in report.failures[:10]:
        print(f"  failed: {f['error']}")
    if len(report.failures) > 10:
        print(f"  ... and {len(report.failures) - 10} more (see --json)")
    return 0


# ------------------------------------------------------------------------------ search
# the integers SQLite stores (and compares) exactly
_INT64 = (-(1 << 63), (1 << 63) - 1)
_WHERE_VALUES = "a string, a number, true, false, null, or a list of those"


def _where_scalar(value, item: str, inside: bool):
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise CommandError(f"--where {item!r}: {value} is outside the 64-bit integer range metadata is "
                               "stored with")
        return value
    what = "a JSON object" if isinstance(value, dict) else "a list"
    where = " inside a list" if inside else ""
    raise CommandError(f"--where {item!r}: {what}{where} is not a value to compare with; give {_WHERE_VALUES}")


def _parse_where(items: Optional[List[str]]) -> Dict[str, Any]:
    """--where FIELD=VALUE filters: VALUE as JSON when it parses (a number, true, a list
    meaning "any of"), else the text itself; only values SQLite can compare pass."""
    out: Dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise CommandError(f"--where takes FIELD=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        if not k:
            raise CommandError(f"--where takes FIELD=VALUE, got {it!r} (no field)")
        try:
            value = json.loads(v)
        except ValueError:
            value = v
        if isinstance(value, list):
            out[k] = [_where_scalar(x, it, True) for x in value]
        else:
            out[k] = _where_scalar(value, it, False)
    return out


def _alpha(args) -> float:
    if args.weights is None:
        return args.alpha
    try:
        w_img, w_txt = (float(v) for v in args.weights.split(","))
    except ValueError:
        raise CommandError(f"--weights takes IMAGE,TEXT weights such as 0.6,0.4, got {args.weights!r}") from None
    if w_img < 0 or w_txt < 0 or w_img + w_txt <= 0:
        raise CommandError("--weights must be non-negative and not both zero")
    return w_txt / (w_img + w_txt)


def cmd_search(args) -> int:
    from cliprt.collection import Collection
    from cliprt.retrieval import Retriever

    if args.text is not None and args.query is not None:
        raise CommandError("give the text either as QUERY or with --text, not both")
    text = args.text if args.text is not None else args.query
    if not args.image and not text:
        raise CommandError("give a text query, --image PATH, or both")
    alpha = _alpha(args)
    where = _parse_where(args.where) or None
    if args.image:
        regular_file(args.image, "query image")
    col = Collection.open(args.index)
    try:
        enc = load_encoder(args.model or col.config["model"], args)
        hits = Retriever(enc, col).search(text, args.image, k=args.k, alpha=alpha,
                                          where=where, path_like=args.path_like)
    finally:
        col.close()
    if args.image and text:
        what = f"image {args.image} + text {text!r} (alpha {alpha})"
    else:
        what = f"image {args.image}" if args.image else f"text {text!r}"
    if args.json:
        print_json({"query": what, "results": [{"id": h.id, "score": h.score, "path": h.path,
                                                "meta": h.metadata.get("meta", {})} for h in hits]})
    else:
        print(f"top {len(hits)} for {what}:")
        for rank, h in enumerate(hits, 1):
            print(f"{rank:3d}. {h.score:7.4f}  {h.path}")
    return 0


# ------------------------------------------------------------------------------ classify
def _classnames(spec: str, what: str) -> List[str]:
    """``evaluate.read_classnames`` (a file, or a built-in list's name), its file named on error."""
    from cliprt.evaluate import read_classnames

    try:
        return read_classnames(spec)
    except UnicodeDecodeError as e:
        raise CommandError(f"{what} file {spec!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def cmd_classify(args) -> int:
    from cliprt.zeroshot import ZeroShotClassifier

    enc = load_encoder(args.model, args)
    labels = _classnames(args.labels, "labels")
    clf = ZeroShotClassifier(enc, labels, templates=read_lines(args.templates, "templates") if args.templates else None)
    # what is not a regular file is an error of that image, found without opening it (a FIFO blocks)
    errors: List[Tuple[int, str]] = []
    readable: List[int] = []
    for i, path in enumerate(args.images):
        try:
            regular_file(path, "image")
            readable.append(i)
        except CommandError as e:
            errors.append((i, str(e)))
    emb, idx, failed = enc.encode_images([args.images[i] for i in readable], on_error="skip", return_errors=True)
    errors = sorted(errors + [(readable[e.index], e.message) for e in failed])
    if len(idx) == 0:
        more = f" (and {len(errors) - 1} more image{'s' if len(errors) > 2 else ''} failed)" if len(errors) > 1 else ""
        raise CommandError(f"no image could be classified: {errors[0][1]}{more}")
    k = min(args.k, len(labels))
    top, probs = clf.topk(embeddings=emb, k=k)
    rows = [{"image": args.images[readable[int(i)]],
             "top": [{"label": labels[int(c)], "p": float(probs[row, j])} for j, c in enumerate(top[row])]}
            for row, i in enumerate(idx)]
    if args.json:
        print_json({"results": rows, "errors": [{"image": args.images[i], "error": m} for i, m in errors]})
    else:
        for r in rows:
            print(f"{r['image']}: " + ", ".join(f"{t['label']} {t['p']:.3f}" for t in r["top"]))
        for i, m in errors:
            print(f"{args.images[i]}: error: {m}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------ eval
def cmd_eval(args) -> int:
    from cliprt import evaluate as ev

    enc = load_encoder(args.model, args)
    storages = [s for s in (args.storage or "f32").split(",") if s]
    classnames = _classnames(args.classnames, "class-name") if args.classnames else None
    templates = read_lines(args.templates, "templates") if args.templates else None
    try:
        if args.kind == "zeroshot":
            results = ev.evaluate_zeroshot(enc, args.data, classnames=classnames, templates=templates,
                                           every=args.every, storages=storages, progress=not args.json)
        else:
            results = ev.evaluate_retrieval(enc, args.data, storages=storages, progress=not args.json)
    except UnicodeDecodeError as e:     # the labels CSV or the captions file
        raise CommandError(f"evaluation data {args.data!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    results["model"] = args.model
    if args.json:
        print_json(results)
    else:
        for s, r in results["storage"].items():
            print(f"[{s}] " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return 0


# ------------------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    from cliprt.bench import encoder_throughput

    enc = load_encoder(args.model, args)
    out = {"model": args.model}
    out.update(encoder_throughput(enc, images=args.images,
                                  texts=read_lines(args.texts, "texts") if args.texts else None,
                                  limit=args.limit, batch_size=args.batch_size, repeats=args.repeats))
    if args.json:
        print_json(out)
    else:
        for k, v in out.items():
            print(f"{k:12s} {v}")
    return 0


# ------------------------------------------------------------------------------ quickstart
def cmd_quickstart(args) -> int:
    from cliprt.demos import quickstart
    from cliprt.registry import is_built

    if not is_built():
        print("building the default model (once) ...", file=sys.stderr)
    out = quickstart(args.queries, progress=not args.json)
    if args.json:
        print_json(out)
        return 0
    print(f"cliprt quickstart — model {out['model']}, {out['photos']} photos embedded at {out['images_per_s']} "
          "images/s into an i8 index")
    for q, hits in out["searches"].items():
        print(f"\nsearch {q!r}:")
        for name, score in hits:
            print(f"  {score:7.4f}  {name}")
    print("\nzero-shot classification (ImageNet class names, top 3):")
    for name, preds in out["classified"].items():
        print(f"  {name}: " + ", ".join(f"{c} {p:.3f}" for c, p in preds))
    return 0


# ------------------------------------------------------------------------------ parsers
def register(sub) -> None:
    from cliprt.demos import QUICKSTART_QUERIES
    from cliprt.sources import DEFAULT_MAX_ITEM_BYTES

    p = sub.add_parser("models", help="list models; build the embedded default model")
    p.add_argument("models_command", nargs="?", choices=("list", "build-default"), default="list")
    p.add_argument("--force", action="store_true", help="rebuild even if the package exists")
    p.add_argument("--out", metavar="DIR", help="build into DIR instead of the cache (then use --model DIR)")
    p.add_argument("--holdout-every", type=int_at_least(2), metavar="N",
                   help="fit the bridge without the classes whose index is a multiple of N (an evaluation "
                        "variant for held-out zero-shot accuracy; needs --out)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="embed images into a collection (incremental, resumable)")
    p.add_argument("src", nargs="+", metavar="SRC", help="folder (recursive), file list (.txt) or .tar shards")
    p.add_argument("--model", default="default", help="model package directory or 'default'")
    p.add_argument("--index", required=True, metavar="DIR", help="collection directory (created if missing)")
    p.add_argument("--storage", choices=STORAGES, help="index storage for a new collection (default f32)")
    p.add_argument("--precision", default=None, choices=PRECISIONS)
    p.add_argument("--fast", action="store_true", help="fast preprocessing (JPEG draft decoding)")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--commit-every", type=int_at_least(1), default=2048, help="save the collection every N items")
    p.add_argument("--max-item-bytes", type=byte_size, default=DEFAULT_MAX_ITEM_BYTES, metavar="N",
                   help="refuse (as failures, unread) files and tar members larger than N bytes; K, M, G "
                        "suffixes allowed (default 64M)")
    p.add_argument("--retry-failed", action="store_true", help="try again items that failed before")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help="search a collection by text, image, or image + text")
    p.add_argument("index", metavar="INDEX", help="collection directory")
    p.add_argument("query", nargs="?", help='text query; "-word" marks a negative term')
    p.add_argument("--image", metavar="PATH", help="query image (with a text query: composed search)")
    p.add_argument("--text", help="text query, or the modifier of a composed query with --image")
    p.add_argument("--alpha", type=float_between(0.0, 1.0), default=0.5,
                   help="composed search: weight of the text (0..1)")
    p.add_argument("--weights", metavar="IMAGE,TEXT", help="composed search weights, e.g. 0.6,0.4 (sets --alpha)")
    p.add_argument("--model", help="model (default: the one the collection was embedded with)")
    p.add_argument("-k", type=int_at_least(1), default=10)
    p.add_argument("--where", action="append", metavar="FIELD=VALUE", help="metadata filter (repeatable)")
    p.add_argument("--path-like", metavar="PATTERN", help="SQL LIKE filter on paths, e.g. '%%/dogs/%%'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("classify", help="zero-shot classify images among labels")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="default")
    p.add_argument("--labels", required=True, metavar="FILE", help="one class name per line, or 'imagenet'")
    p.add_argument("--templates", metavar="FILE", help="prompt templates with {} (one per line)")
    p.add_argument("-k", type=int_at_least(1), default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="zero-shot accuracy or retrieval recall on a labelled set")
    p.add_argument("kind", choices=("zeroshot", "retrieval"))
    p.add_argument("--model", default="default")
    p.add_argument("--data", required=True, help="zeroshot: folder per class or labels CSV; retrieval: captions")
    p.add_argument("--classnames", help="class names: a file (one per line) or 'imagenet'")
    p.add_argument("--templates", metavar="FILE")
    p.add_argument("--every", type=int_at_least(0), default=0, metavar="N",
                   help="zeroshot: keep only classes whose index is a multiple of N (held-out protocol)")
    p.add_argument("--storage", default="f32",
                   help="comma-separated index storages to score through, e.g. f32,i8,b1 (b1@0: without "
                        "exact rescoring)")
    p.add_argument("--precision", default=None, choices=PRECISIONS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="encoder throughput on your images and captions (median of repeats)")
    p.add_argument("--model", default="default")
    p.add_argument("--images", metavar="SRC", help="folder, file list or tar shard of images")
    p.add_argument("--texts", metavar="FILE", help="captions, one per line (default: built-in captions)")
    p.add_argument("--limit", type=int_at_least(1), default=256, help="images to use at most")
    p.add_argument("--batch-size", type=int_at_least(1), default=32)
    p.add_argument("--repeats", type=int_at_least(1), default=3)
    p.add_argument("--precision", default=None, choices=PRECISIONS)
    p.add_argument("--fast", action="store_true", help="fast preprocessing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("quickstart", help="build the default model, embed sample photos, search, classify")
    p.add_argument("--queries", nargs="*", default=list(QUICKSTART_QUERIES))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quickstart)
