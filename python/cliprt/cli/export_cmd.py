"""``cliprt export``: a PyTorch model to a verified model package (``cliprt.export``)."""
from __future__ import annotations

import argparse
import json
import os
import sys

from ._common import CommandError

PRECISIONS = ("fp32", "fp16", "int8")

EXPORT_SOURCES = """sources:
  open_clip:CONFIG   an open_clip config (ViT-B-32, MobileCLIP-S1, RN50, ...); weights from
                     --checkpoint FILE or --pretrained TAG (downloads), else random init (tests only)
  hf:PATH            a Hugging Face CLIP/SigLIP model directory or hub id
  st:PATH            a sentence-transformers model directory or hub id

The package is verified against PyTorch (ONNX Runtime CPU) before it is written: min cosine
>= 0.99999 (fp32), 0.999 (fp16), 0.99 (int8), and batch sizes 1/3/17 agree with one batch.
A refused export exits 1 and leaves nothing at --out. Needs the 'export' extra:
  pip install 'cliprt[export]'"""


def cmd_export(args) -> int:
    missing = []
    for mod in ("torch", "onnx", "onnxruntime") + (("open_clip",) if args.source.startswith("open_clip:") else ()):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise CommandError(f"needs the 'export' extra (missing: {', '.join(missing)}); "
                           f"install it with: pip install 'cliprt[export]'")
    from cliprt.export.pipeline import ExportError, export_package
    from cliprt.export.source import SourceUnavailable, load_source
    from cliprt.export.verify import ParityError

    # what can be told from the arguments is told before the model is loaded
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise CommandError(f"--precision takes some of {', '.join(PRECISIONS)}, comma-separated; got "
                           f"{args.precision!r}")
    if os.path.exists(args.out) and not args.overwrite:
        raise CommandError(f"{args.out!r} already exists (pass --overwrite to replace it)")
    if args.verify_images is not None and not os.path.isdir(args.verify_images):
        raise CommandError(f"--verify-images {args.verify_images!r} is not a folder")
    try:
        source = load_source(args.source, checkpoint=args.checkpoint, pretrained=args.pretrained)
        if args.source.startswith("open_clip:") and not (args.checkpoint or args.pretrained):
            print("cliprt export: warning: no --checkpoint or --pretrained: exporting RANDOMLY INITIALISED weights",
                  file=sys.stderr)
        report = export_package(source, args.out, precisions=precisions, verify=not args.no_verify,
                                verify_images=args.verify_images, overwrite=args.overwrite)
    except ParityError as e:
        # the failed checks and the verification table are the command's report: on stdout
        # (in the JSON with --json); the error itself is one line
        head, _, detail = str(e).partition("\n")
        if args.json:
            print(json.dumps({"refused": True, "error": str(e), "package": args.out}, indent=2))
        elif detail:
            print(detail)
        raise CommandError(f"{head.rstrip(':')} (details on stdout)", code=1) from None
    except (ExportError, SourceUnavailable) as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps(dict(report.to_json(), package=args.out), indent=2))
    else:
        print(report.table())
        print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
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
    p.set_defaults(func=cmd_export)
