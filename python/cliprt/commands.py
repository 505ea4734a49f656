"""The model-facing commands of the `cliprt` CLI: models, embed, search, classify, eval,
quickstart. Each prints a readable table, or JSON with --json; user errors end in a one-line
message and a non-zero exit (cli.main turns the exceptions below into that)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

STORAGES = ("f32", "f16", "bf16", "i8", "b1")


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=float))


def _encoder(model: str, args):
    from .encode import Encoder

    kwargs: Dict[str, Any] = {}
    if getattr(args, "precision", None):
        kwargs["precision"] = args.precision
    if getattr(args, "fast", False):
        kwargs["image_mode"] = "fast"
    return Encoder.load(model, **kwargs)


def _progress(enabled: bool, total: Optional[int], desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr)


# ------------------------------------------------------------------------------ models
def cmd_models(args) -> int:
    from .registry import default_model_dir

    if args.models_command == "build-default":
        path = _build_default(progress=not args.json, force=args.force, holdout_every=args.holdout_every,
                              out=args.out)
        if args.json:
            _print_json({"path": path})
        else:
            print(f"default model ready at {path}")
        return 0
    path = default_model_dir()
    exists = os.path.isfile(os.path.join(path, "manifest.json"))
    info = {"name": "default", "path": path, "built": exists}
    if exists:
        from .models import ModelPackage

        m = ModelPackage.load(path).manifest
        info.update(family=m.family, dim=m.embed_dim, towers=list(m.towers), description=m.description)
    if args.json:
        _print_json([info])
    else:
        print(f"{'name':10s} {'built':6s} path")
        print(f"{info['name']:10s} {'yes' if exists else 'no':6s} {path}")
        if exists:
            print(f"  {info['description']}")
    return 0


def _build_default(progress: bool, force: bool = False, holdout_every: Optional[int] = None,
                   out: Optional[str] = None) -> str:
    try:
        from cliprt.export.default_model import build_default_model
    except ImportError as e:
        raise CommandError(f"building the default model needs the 'default' extra "
                           f"(pip install 'cliprt[default]'): {e}") from None
    from .registry import default_model_dir

    bar = None
    state = {"stage": None}

    def report(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if not progress:
            return
        from tqdm.auto import tqdm

        if stage != state["stage"]:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=stage, file=sys.stderr)
            state["stage"] = stage
        bar.n = done
        bar.refresh()

    if holdout_every is not None and out is None:
        raise CommandError("--holdout-every builds an evaluation variant: give it its own --out DIR")
    try:
        path = build_default_model(out or default_model_dir(), progress=report, force=force,
                                   holdout_every=holdout_every)
    except ImportError as e:
        raise CommandError(f"building the default model needs the 'default' extra "
                           f"(pip install 'cliprt[default]'): {e}") from None
    finally:
        if bar is not None:
            bar.close()
    return os.fspath(path)


# ------------------------------------------------------------------------------ embed
def cmd_embed(args) -> int:
    from .collection import Collection
    from .sources import iter_source

    enc = _encoder(args.model, args)
    if "image" not in enc.manifest.towers:
        raise CommandError(f"model {args.model!r} has no image tower")
    col = Collection.open_or_create(args.index, model=_model_name(args.model), dim=enc.dim, storage=args.storage)
    known = col.known()
    counts = {"embedded": 0, "skipped": 0, "failed": 0}
    pending_meta: Dict[str, Dict[str, Any]] = {}

    def todo():
        for item in iter_source(args.src):
            if item.key in pending_meta:        # listed twice in this run
                continue
            prev = known.get(item.key)
            if prev is not None and prev[0] == item.size and prev[1] == item.mtime and not (prev[2] and args.retry_failed):
                counts["skipped"] += 1
                continue
            pending_meta[item.key] = {"key": item.key, "path": item.path, "size": item.size, "mtime": item.mtime}
            yield item

    items = todo()
    first = next(items, None)
    if first is None and counts["skipped"] == 0:
        raise CommandError(f"no images found in {args.src}")

    def chained():
        if first is not None:
            yield first
            yield from items

    stream = chained()
    keyed = ((it.key, it.data) for it in stream)
    keys_iter, data_iter = _split(keyed)
    bar = _progress(not args.json and not args.no_progress, None, "embedding")
    failures: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    since_commit = 0
    for batch in enc.iter_images(data_iter, keys=keys_iter, batch_size=args.batch_size, on_error="skip"):
        records = [pending_meta.pop(k) for k in batch.keys]
        if records:
            col.add(batch.embeddings, records)
        errs = []
        for e in batch.errors:
            rec = pending_meta.pop(e.key)
            errs.append(dict(rec, error=e.message))
        if errs:
            col.add_failures(errs)
            failures += errs
        counts["embedded"] += len(records)
        counts["failed"] += len(errs)
        since_commit += len(records) + len(errs)
        if since_commit >= args.commit_every:
            col.commit()
            since_commit = 0
        if bar is not None:
            bar.update(len(records) + len(errs))
    col.commit()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = dict(counts, total=len(col), seconds=round(seconds, 3),
                   images_per_s=round(counts["embedded"] / seconds, 2) if seconds > 0 and counts["embedded"] else 0.0,
                   index=os.path.abspath(args.index), failures=[{"path": f["path"], "error": f["error"]}
                                                                 for f in failures])
    if args.json:
        _print_json(summary)
    else:
        print(f"embedded {counts['embedded']}, skipped {counts['skipped']} already done, failed {counts['failed']} "
              f"— {summary['images_per_s']} images/s; collection {summary['index']} holds {len(col)}")
        for f in failures[:10]:
            print(f"  failed: {f['error']}")
        if len(failures) > 10:
            print(f"  ... and {len(failures) - 10} more (see --json)")
    col.close()
    return 0


def _split(pairs):
    """Two iterators (keys, values) over one stream of pairs, consumed in lockstep."""
    import collections

    keys: collections.deque = collections.deque()
    values: collections.deque = collections.deque()
    it = iter(pairs)

    def pull():
        k, v = next(it)
        keys.append(k)
        values.append(v)

    def gen(own):
        while True:
            if not own:
                try:
                    pull()
                except StopIteration:
                    return
            yield own.popleft()

    return gen(keys), gen(values)


def _model_name(model: str) -> str:
    return model if model == "default" else os.path.abspath(model)


# ------------------------------------------------------------------------------ search
def _parse_where(items: Optional[List[str]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise CommandError(f"--where takes FIELD=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_search(args) -> int:
    from .collection import Collection
    from .retrieval import Retriever

    col = Collection.open(args.index)
    enc = _encoder(args.model or col.config["model"], args)
    r = Retriever(enc, col)
    filters = {"where": _parse_where(args.where) or None, "path_like": args.path_like}
    if args.text is not None:
        if args.query is not None:
            raise CommandError("give the text either as QUERY or with --text, not both")
        args.query = args.text
    if args.weights is not None:
        try:
            w_img, w_txt = (float(v) for v in args.weights.split(","))
        except ValueError:
            raise CommandError(f"--weights takes IMAGE,TEXT weights such as 0.6,0.4, got {args.weights!r}") from None
        if w_img < 0 or w_txt < 0 or w_img + w_txt <= 0:
            raise CommandError("--weights must be non-negative and not both zero")
        args.alpha = w_txt / (w_img + w_txt)
    if args.image and args.query:
        hits = r.search_composed(args.image, args.query, alpha=args.alpha, k=args.k, **filters)
        what = f"image {args.image} + text {args.query!r} (alpha {args.alpha})"
    elif args.image:
        hits = r.search_image(args.image, k=args.k, **filters)
        what = f"image {args.image}"
    elif args.query:
        hits = r.search_text(args.query, k=args.k, **filters)
        what = f"text {args.query!r}"
    else:
        raise CommandError("give a text query, --image PATH, or both")
    if args.json:
        _print_json({"query": what, "results": [{"id": h.id, "score": h.score, "path": h.path,
                                                 "meta": h.metadata.get("meta", {})} for h in hits]})
    else:
        print(f"top {len(hits)} for {what}:")
        for rank, h in enumerate(hits, 1):
            print(f"{rank:3d}. {h.score:7.4f}  {h.path}")
    col.close()
    return 0


# ------------------------------------------------------------------------------ classify
def _read_lines(path: str, what: str) -> List[str]:
    if not os.path.isfile(path):
        raise CommandError(f"{what} file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not lines:
        raise CommandError(f"{what} file {path!r} is empty")
    return lines


def cmd_classify(args) -> int:
    from .evaluate import read_classnames
    from .zeroshot import ZeroShotClassifier, model_templates

    enc = _encoder(args.model, args)
    labels = read_classnames(args.labels)
    templates = _read_lines(args.templates, "templates") if args.templates else model_templates(enc.manifest)
    clf = ZeroShotClassifier(enc, labels, templates=templates)
    emb, idx, errors = enc.encode_images(args.images, on_error="skip", return_errors=True)
    k = min(args.k, len(labels))
    top, probs = clf.topk(embeddings=emb, k=k) if len(emb) else (np.zeros((0, k), np.int64), None)
    rows = []
    for row, i in enumerate(idx):
        rows.append({"image": args.images[int(i)],
                     "top": [{"label": labels[int(c)], "p": float(probs[row, j])} for j, c in enumerate(top[row])]})
    if args.json:
        _print_json({"results": rows, "errors": [{"image": args.images[e.index], "error": e.message} for e in errors]})
    else:
        for r in rows:
            best = ", ".join(f"{t['label']} {t['p']:.3f}" for t in r["top"])
            print(f"{r['image']}: {best}")
        for e in errors:
            print(f"{args.images[e.index]}: error: {e.message}", file=sys.stderr)
    return 0 if rows else 1


# ------------------------------------------------------------------------------ eval
def cmd_eval(args) -> int:
    from . import evaluate as ev
    from .zeroshot import class_embeddings, model_templates

    enc = _encoder(args.model, args)
    storages = [s for s in (args.storage or "f32").split(",") if s]
    for s in storages:
        name, _, r = s.partition("@")
        if name not in STORAGES or (r and not r.isdigit()):
            raise CommandError(f"unknown storage {s!r} (expected some of {', '.join(STORAGES)}, "
                               "optionally @R for the rescoring factor, e.g. b1@0)")
    if args.kind == "zeroshot":
        names = ev.read_classnames(args.classnames) if args.classnames else None
        paths, labels, names = ev.load_classification(args.data, names)
        templates = _read_lines(args.templates, "templates") if args.templates else model_templates(enc.manifest)
        classes = None
        if args.every:
            classes = [c for c in range(len(names)) if c % args.every == 0]
        t0 = time.perf_counter()
        emb, idx, errors = enc.encode_images(paths, on_error="skip", return_errors=True,
                                             progress=not args.json)
        cls_names = names if classes is None else [names[c] for c in classes]
        cls_emb_sub = class_embeddings(enc, cls_names, templates)
        cls_emb = np.zeros((len(names), enc.dim), np.float32)
        cls_emb[classes if classes is not None else slice(None)] = cls_emb_sub
        lab = np.asarray(labels)[idx]
        results = {"kind": "zeroshot", "model": args.model, "data": args.data, "templates": len(templates),
                   "failed_images": len(errors), "seconds": round(time.perf_counter() - t0, 2), "storage": {}}
        for s in storages:
            results["storage"][s] = ev.zero_shot(emb, lab, cls_emb, classes=classes, storage=s)
        if args.every:
            results["classes_kept"] = f"index % {args.every} == 0"
    else:
        images, captions, owner = ev.load_captions(args.data)
        t0 = time.perf_counter()
        img, idx, errors = enc.encode_images(images, on_error="skip", return_errors=True, progress=not args.json)
        if errors:
            raise CommandError(f"{len(errors)} evaluation image(s) could not be read, e.g. {errors[0].message}")
        txt = enc.encode_texts(captions)
        results = {"kind": "retrieval", "model": args.model, "data": args.data, "images": len(images),
                   "captions": len(captions), "seconds": round(time.perf_counter() - t0, 2), "storage": {}}
        for s in storages:
            results["storage"][s] = ev.retrieval(img, txt, owner, storage=s)
    if args.json:
        _print_json(results)
    else:
        for s, r in results["storage"].items():
            print(f"[{s}] " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    return 0


# ------------------------------------------------------------------------------ quickstart
def _sample_photos() -> List[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.join(here, "..", "..", "..", "shared", "data", "imagenet-sample")
    for cand in (os.environ.get("CLIPRT_SAMPLE_IMAGES"), shared, os.path.join(os.getcwd(), "..", "shared", "data",
                                                                              "imagenet-sample")):
        if cand and os.path.isdir(cand):
            files = sorted(f for f in os.listdir(cand) if f.lower().endswith((".jpg", ".jpeg", ".png")))
            if files:
                return [os.path.join(cand, f) for f in files[::10]]
    try:
        import skimage.data

        folder = os.path.dirname(skimage.data.__file__)
        return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                      if f.lower().endswith((".jpg", ".jpeg", ".png")))
    except ImportError:
        return []


def cmd_quickstart(args) -> int:
    import tempfile

    from .registry import default_model_dir
    from .retrieval import Retriever
    from .zeroshot import ZeroShotClassifier
    from .collection import Collection

    if not os.path.isfile(os.path.join(default_model_dir(), "manifest.json")):
        print("building the default model (once) ...", file=sys.stderr)
        _build_default(progress=not args.json)
    photos = _sample_photos()
    if not photos:
        raise CommandError("no sample photos found (install scikit-image, or set CLIPRT_SAMPLE_IMAGES to a folder)")
    from .encode import Encoder

    enc = Encoder.load("default")
    out: Dict[str, Any] = {"model": enc.manifest.name, "photos": len(photos)}
    with tempfile.TemporaryDirectory() as tmp:
        col = Collection.create(os.path.join(tmp, "photos"), model="default", dim=enc.dim, storage="i8")
        t0 = time.perf_counter()
        emb, idx, errors = enc.encode_images(photos, on_error="skip", return_errors=True, progress=not args.json)
        out["images_per_s"] = round(len(emb) / (time.perf_counter() - t0), 1)
        col.add(emb, [{"key": photos[int(i)], "path": photos[int(i)]} for i in idx])
        col.commit()
        r = Retriever(enc, col)
        out["searches"] = {}
        for q in args.queries:
            out["searches"][q] = [(os.path.basename(h.path), round(h.score, 4)) for h in r.search_text(q, k=3)]
        from .evaluate import builtin_classnames

        clf = ZeroShotClassifier(enc, builtin_classnames("imagenet"))
        top, probs = clf.topk(embeddings=emb[:5], k=3)
        names = clf.classnames
        out["classified"] = {os.path.basename(photos[int(i)]): [(names[int(c)], round(float(p), 3))
                                                                for c, p in zip(top[r_], probs[r_])]
                             for r_, i in enumerate(idx[:5])}
        col.close()
    if args.json:
        _print_json(out)
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


# ------------------------------------------------------------------------------ bench
def cmd_bench(args) -> int:
    """Throughput of the encoder on the user's own images (and captions), end to end."""
    import statistics

    from .sources import iter_source

    enc = _encoder(args.model, args)
    out: Dict[str, Any] = {"model": args.model, "precisions": dict(enc.precisions), "batch": args.batch_size,
                           "threads": enc.threads, "inflight": enc.inflight}
    if "image" in enc.manifest.towers and args.images:
        paths = [it.data for _, it in zip(range(args.limit), iter_source(args.images))]
        if not paths:
            raise CommandError(f"no images found in {args.images}")
        enc.encode_images(paths[:args.batch_size], batch_size=args.batch_size, on_error="skip",
                          return_errors=True)        # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, _, errors = enc.encode_images(paths, batch_size=args.batch_size, on_error="skip", return_errors=True)
            times.append(time.perf_counter() - t0)
        out.update(images=len(paths), failed=len(errors), images_per_s=round(len(paths) / statistics.median(times), 2))
    if "text" in enc.manifest.towers:
        texts = (_read_lines(args.texts, "texts") if args.texts else
                 [f"a photo of a {w} next to a {v}" for w in ("dog", "cat", "car", "tree", "house", "bird", "boat", "chair")
                  for v in ("table", "river", "window", "road", "person", "flower", "mountain", "lamp")])
        enc.encode_texts(texts[:args.batch_size])
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            enc.encode_texts(texts, batch_size=args.batch_size)
            times.append(time.perf_counter() - t0)
        out.update(texts=len(texts), texts_per_s=round(len(texts) / statistics.median(times), 1))
    if args.json:
        _print_json(out)
    else:
        for k, v in out.items():
            print(f"{k:12s} {v}")
    return 0


# ------------------------------------------------------------------------------ parsers
def register(sub) -> None:
    p = sub.add_parser("models", help="list models; build the embedded default model")
    p.add_argument("models_command", nargs="?", choices=("list", "build-default"), default="list")
    p.add_argument("--force", action="store_true", help="rebuild even if the package exists")
    p.add_argument("--out", metavar="DIR", help="build into DIR instead of the cache (then use --model DIR)")
    p.add_argument("--holdout-every", type=int, metavar="N",
                   help="fit the bridge without the classes whose index is a multiple of N (an evaluation "
                        "variant for held-out zero-shot accuracy; needs --out)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="embed images into a collection (incremental, resumable)")
    p.add_argument("src", nargs="+", metavar="SRC", help="folder (recursive), file list (.txt) or .tar shards")
    p.add_argument("--model", default="default", help="model package directory or 'default'")
    p.add_argument("--index", required=True, metavar="DIR", help="collection directory (created if missing)")
    p.add_argument("--storage", default="f32", choices=STORAGES, help="index storage for a new collection")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "int8"))
    p.add_argument("--fast", action="store_true", help="fast preprocessing (JPEG draft decoding)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--commit-every", type=int, default=2048, help="save the collection every N items")
    p.add_argument("--retry-failed", action="store_true", help="try again items that failed before")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", help="search a collection by text, image, or image + text")
    p.add_argument("index", metavar="INDEX", help="collection directory")
    p.add_argument("query", nargs="?", help='text query; "-word" marks a negative term')
    p.add_argument("--image", metavar="PATH", help="query image (with a text query: composed search)")
    p.add_argument("--text", help="text query, or the modifier of a composed query with --image")
    p.add_argument("--alpha", type=float, default=0.5, help="composed search: weight of the text (0..1)")
    p.add_argument("--weights", metavar="IMAGE,TEXT", help="composed search weights, e.g. 0.6,0.4 (sets --alpha)")
    p.add_argument("--model", help="model (default: the one the collection was embedded with)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--where", action="append", metavar="FIELD=VALUE", help="metadata filter (repeatable)")
    p.add_argument("--path-like", metavar="PATTERN", help="SQL LIKE filter on paths, e.g. '%%/dogs/%%'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("classify", help="zero-shot classify images among labels")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", default="default")
    p.add_argument("--labels", required=True, metavar="FILE", help="one class name per line, or 'imagenet'")
    p.add_argument("--templates", metavar="FILE", help="prompt templates with {} (one per line)")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", help="zero-shot accuracy or retrieval recall on a labelled set")
    p.add_argument("kind", choices=("zeroshot", "retrieval"))
    p.add_argument("--model", default="default")
    p.add_argument("--data", required=True, help="zeroshot: folder per class or labels CSV; retrieval: captions")
    p.add_argument("--classnames", help="class names: a file (one per line) or 'imagenet'")
    p.add_argument("--templates", metavar="FILE")
    p.add_argument("--every", type=int, default=0, metavar="N",
                   help="zeroshot: keep only classes whose index is a multiple of N (held-out protocol)")
    p.add_argument("--storage", default="f32",
                   help="comma-separated index storages to score through, e.g. f32,i8,b1 (b1@0: without "
                        "exact rescoring)")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "int8"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="encoder throughput on your images and captions (median of repeats)")
    p.add_argument("--model", default="default")
    p.add_argument("--images", metavar="SRC", help="folder, file list or tar shard of images")
    p.add_argument("--texts", metavar="FILE", help="captions, one per line (default: built-in captions)")
    p.add_argument("--limit", type=int, default=256, help="images to use at most")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default=None, choices=("fp32", "fp16", "int8"))
    p.add_argument("--fast", action="store_true", help="fast preprocessing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("quickstart", help="build the default model, embed sample photos, search, classify")
    p.add_argument("--queries", nargs="*", default=["a dog", "a red sports car", "a bird on a branch"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quickstart)
