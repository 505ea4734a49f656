"""End-to-end encoding throughput: PyTorch eager vs a plain ONNX Runtime loop vs cliprt.Encoder.

In one run, for each model (random-init open_clip ViT-B-32 and MobileCLIP-S1, seeded, the
same weights in all three engines):

* images/s from JPEG files (../shared/data/imagenet-sample) at batch 1, 8 and 32:
  - torch eager: PIL open + open_clip's eval transform + model.encode_image, no grad;
  - plain ORT: the same PIL + open_clip transform, then InferenceSession.run per batch
    (default session options, as a user would write it);
  - cliprt fp32 (exact preprocessing) and cliprt precision="int8" (per tower, where the
    export verified cosine >= 0.999), through Encoder.encode_images on the file paths;
* texts/s for captions at the same batch sizes: open_clip tokenizer + encode_text (torch),
  open_clip tokenizer + session.run at the full context length (plain ORT), and
  Encoder.encode_texts (cliprt fp32 and int8);
* exact vs fast preprocessing: images/s of cliprt's Preprocessor on one thread, on the
  sample photos and on >= 1024 px versions of them, and the embedding cosine of fast vs
  exact mode through the model.

Every engine runs the same items after a warm-up pass; each cell is the median of --repeats
passes over them. Parity (min cosine of cliprt's fp32 and int8 embeddings vs the PyTorch
reference) is measured on all 1000 sample photos (--parity-images) and the captions.
Packages are exported once into --work (reused when present).

    python benchmarks/encode.py [--images 128] [--repeats 3] [--out benchmarks/results/encode.md]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from _machine import cpu_name  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "..", "shared", "data", "imagenet-sample")
MODELS = ("ViT-B-32", "MobileCLIP-S1")
BATCHES = (1, 8, 32)




def cpu_simd() -> str:
    """The SIMD features that pick ONNX Runtime's and cliprt's kernels (int8 dot products above all)."""
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "asimddp", "i8mm")
    have = [f for f in wanted if f in flags]
    missing = [f for f in ("avx512f", "avx512_vnni", "avx_vnni") if f not in flags and "avx2" in flags]
    return " ".join(have) + (f"; no {', no '.join(missing)}" if missing else "")


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def median_rate(fn, n_items: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n_items / statistics.median(times)


def chunks(seq, b):
    return [seq[i:i + b] for i in range(0, len(seq), b)]


def captions(n: int, seed: int = 0):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    rng = np.random.default_rng(seed)
    shapes = ["a photo of a {}.", "a close-up photo of the {} on a wooden table.",
              "a blurry photo of a {} taken at night in the city", "{}",
              "an old black and white picture of a {} next to a small red car and two people walking by",
              "a painting of a {} in the style of an impressionist landscape, with soft light and a river."]
    return [shapes[int(rng.integers(len(shapes)))].format(IMAGENET_CLASSNAMES[int(rng.integers(1000))])
            for _ in range(n)]


def export_if_missing(config: str, work: str) -> str:
    out = os.path.join(work, config.lower())
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        from cliprt.export.open_clip_family import from_open_clip
        from cliprt.export.pipeline import export_package

        print(f"exporting {config} (random init, seed 0) to {out} ...", flush=True)
        export_package(from_open_clip(config, seed=0), out, precisions=("fp32", "int8"))
    return out


def reference(config: str):
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from cliprt.export.open_clip_family import tag_preprocess

    # the preprocessing the package records: for weights that are not a named pretrained tag,
    # the exporter takes what every pretrained tag of the config agrees on (MobileCLIP: no
    # mean/std, bilinear), not open_clip's OpenAI defaults
    torch.manual_seed(0)
    model = open_clip.create_model(config, force_preprocess_cfg=tag_preprocess(config))
    model.eval()
    if "mobileclip" in config.lower():
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model)
        model.eval()
    pp = open_clip.get_model_preprocess_cfg(model)
    transform = image_transform_v2(PreprocessCfg(**{k: v for k, v in pp.items()
                                                   if k in PreprocessCfg.__dataclass_fields__}), is_train=False)
    return model, transform, open_clip.get_tokenizer(config)


def upscaled(paths, folder, min_side=1024, quality=90):
    """>= 1024 px JPEG versions of the photos (LANCZOS upscale, quality 90)."""
    from PIL import Image

    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        s = max(1.0, min_side / min(im.size))
        im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
        q = os.path.join(folder, os.path.basename(p))
        im.save(q, quality=quality)
        out.append(q)
    return out


def bench_model(config: str, pkg: str, paths, parity_paths, texts, repeats: int, threads: int):
    import onnxruntime as ort
    import torch
    from PIL import Image

    import cliprt
    from cliprt.encode import Encoder

    model, transform, tokenizer = reference(config)
    plain_img = ort.InferenceSession(os.path.join(pkg, "image.onnx"), providers=["CPUExecutionProvider"])
    plain_txt = ort.InferenceSession(os.path.join(pkg, "text.onnx"), providers=["CPUExecutionProvider"])
    enc32 = Encoder.load(pkg, threads=threads)
    enc8 = Encoder.load(pkg, precision="int8", threads=threads)
    rows = []

    def torch_images(b):
        with torch.no_grad():
            for c in chunks(paths, b):
                x = torch.stack([transform(Image.open(p).convert("RGB")) for p in c])
                model.encode_image(x, normalize=True)

    def plain_images(b):
        for c in chunks(paths, b):
            x = np.stack([transform(Image.open(p).convert("RGB")).numpy() for p in c])
            plain_img.run(None, {"pixels": x})

    def torch_texts(b):
        with torch.no_grad():
            for c in chunks(texts, b):
                model.encode_text(tokenizer(c), normalize=True)

    def plain_texts(b):
        for c in chunks(texts, b):
            plain_txt.run(None, {"input_ids": tokenizer(c).numpy()})

    # warm-up: sessions opened, weights paged in, caches filled, before anything is timed
    for b in (1, 8):
        torch_images(b), plain_images(b), torch_texts(b), plain_texts(b)
        enc32.encode_images(paths[:16], batch_size=b), enc8.encode_images(paths[:16], batch_size=b)
        enc32.encode_texts(texts[:64], batch_size=b), enc8.encode_texts(texts[:64], batch_size=b)
    for b in BATCHES:
        r = {"model": config, "batch": b}
        r["img_torch"] = median_rate(lambda: torch_images(b), len(paths), repeats)
        r["img_plain_ort"] = median_rate(lambda: plain_images(b), len(paths), repeats)
        r["img_cliprt_fp32"] = median_rate(lambda: enc32.encode_images(paths, batch_size=b), len(paths), repeats)
        r["img_cliprt_int8"] = median_rate(lambda: enc8.encode_images(paths, batch_size=b), len(paths), repeats)
        r["txt_torch"] = median_rate(lambda: torch_texts(b), len(texts), repeats)
        r["txt_plain_ort"] = median_rate(lambda: plain_texts(b), len(texts), repeats)
        r["txt_cliprt_fp32"] = median_rate(lambda: enc32.encode_texts(texts, batch_size=b), len(texts), repeats)
        r["txt_cliprt_int8"] = median_rate(lambda: enc8.encode_texts(texts, batch_size=b), len(texts), repeats)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
        rows.append(r)
    # parity of the same run's embeddings vs the PyTorch reference (open_clip's transform on
    # PIL + the model in float32), on every photo in `parity_paths`
    def ref_images(ps):
        with torch.no_grad():
            return np.concatenate([model.encode_image(torch.stack([transform(Image.open(p).convert("RGB"))
                                                                   for p in ps[i:i + 50]]), normalize=True).numpy()
                                   for i in range(0, len(ps), 50)])

    ref_img = ref_images(parity_paths)
    with torch.no_grad():
        ref_txt = model.encode_text(tokenizer(texts), normalize=True).numpy()
    cos_img = float((enc32.encode_images(parity_paths) * ref_img).sum(1).min())
    cos_txt = float((enc32.encode_texts(texts) * ref_txt).sum(1).min())
    cos8_img = float((enc8.encode_images(parity_paths) * ref_img).sum(1).min())
    cos8_txt = float((enc8.encode_texts(texts) * ref_txt).sum(1).min())
    parity = {"model": config, "photos": len(parity_paths), "image_min_cos_fp32": cos_img,
              "text_min_cos_fp32": cos_txt, "image_min_cos_int8": cos8_img, "text_min_cos_int8": cos8_txt,
              "int8_towers": dict(enc8.precisions), "cliprt": cliprt.__version__}
    return rows, parity


def bench_preprocess(pkg: str, paths, big_paths, repeats: int, threads: int):
    from cliprt.encode import Encoder
    from cliprt.preprocess import Preprocessor

    spec = Encoder.load(pkg).manifest.image
    out = np.empty((3,) + tuple(spec.size), np.float32)
    res = {}
    for label, ps in (("sample", paths), (">=1024px", big_paths)):
        for mode in ("exact", "fast"):
            pre = Preprocessor(spec, mode=mode)

            def run():
                for p in ps:
                    pre.into(p, out)
            res[f"{label}_{mode}"] = median_rate(run, len(ps), repeats)
    exact = Encoder.load(pkg, threads=threads)
    fast = Encoder.load(pkg, threads=threads, image_mode="fast")
    cos = {}
    for label, ps in (("sample", paths), (">=1024px", big_paths)):
        cos[label] = float((exact.encode_images(ps) * fast.encode_images(ps)).sum(1).min())
    return res, cos


def _default_model():
    try:
        from cliprt.registry import resolve_model

        return resolve_model("default")
    except (ImportError, FileNotFoundError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parity-images", type=int, default=1000, help="sample photos in the parity check")
    ap.add_argument("--threads", type=int, default=0, help="cliprt ONNX Runtime threads (0: all cores)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cliprt-bench-packages"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "encode.md"))
    ap.add_argument("--json", default=os.path.join(HERE, "results", "encode.json"))
    args = ap.parse_args()
    if not os.path.isdir(SAMPLE):
        sys.exit(f"needs the sample photos at {SAMPLE}")
    files = sorted(f for f in os.listdir(SAMPLE) if f.lower().endswith((".jpeg", ".jpg")))
    step = max(1, len(files) // args.images)
    paths = [os.path.join(SAMPLE, f) for f in files[::step][:args.images]]
    all_paths = [os.path.join(SAMPLE, f) for f in files]
    texts = captions(args.texts)
    threads = args.threads or None
    os.makedirs(args.work, exist_ok=True)
    results = {"cpu": cpu_name(), "simd": cpu_simd(), "cores": os.cpu_count(), "commit": git_commit(),
               "images": len(paths),
               "texts": len(texts), "repeats": args.repeats, "rows": [], "parity": [], "preprocess": {}}
    big_dir = tempfile.mkdtemp(prefix="cliprt-big-")
    big = upscaled(paths[:32], big_dir)
    for config in args.models.split(","):
        pkg = export_if_missing(config, args.work)
        rows, parity = bench_model(config, pkg, paths, all_paths[:args.parity_images], texts, args.repeats, threads)
        results["rows"] += rows
        results["parity"].append(parity)
        if config == "ViT-B-32":
            rates, cos = bench_preprocess(pkg, paths[:64], big, args.repeats, threads)
            results["preprocess"] = {"rates": rates, "min_cos_fast_vs_exact": cos}
    trained = _default_model()
    if trained is not None:
        # a trained image tower (the embedded default model): what fast preprocessing costs
        # in embedding cosine on real photos, beside the random-init number above
        _, cos = bench_preprocess(trained, paths[:64], big, 1, threads)
        results["preprocess"]["min_cos_fast_vs_exact_trained"] = cos
    write(results, args.out, args.json)


def write(results, out_md, out_json):
    os.makedirs(os.path.dirname(out_md), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(results, f, indent=1)
    L = [f"# Encoding throughput, end to end (commit {results['commit']})", "",
         f"CPU: {results['cpu']}, {results['cores']} cores ({results.get('simd', 'SIMD features not recorded')}). "
         f"{results['images']} JPEGs from the ImageNet sample, "
         f"{results['texts']} captions; median of {results['repeats']} passes. Random-init open_clip weights "
         "(seed 0), the same in every engine.", "",
         "## Images/s (from JPEG files)", "",
         "| model | batch | torch eager | plain ORT | cliprt fp32 | cliprt int8 | fp32 vs ORT | fp32 vs torch | int8 vs ORT |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        L.append(f"| {r['model']} | {r['batch']} | {r['img_torch']:.1f} | {r['img_plain_ort']:.1f} | "
                 f"{r['img_cliprt_fp32']:.1f} | {r['img_cliprt_int8']:.1f} | "
                 f"{r['img_cliprt_fp32'] / r['img_plain_ort']:.2f}x | {r['img_cliprt_fp32'] / r['img_torch']:.2f}x | "
                 f"{r['img_cliprt_int8'] / r['img_plain_ort']:.2f}x |")
    L += ["", "## Texts/s", "",
          "| model | batch | torch eager | plain ORT | cliprt fp32 | cliprt int8 | fp32 vs ORT | int8 vs ORT |",
          "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        L.append(f"| {r['model']} | {r['batch']} | {r['txt_torch']:.0f} | {r['txt_plain_ort']:.0f} | "
                 f"{r['txt_cliprt_fp32']:.0f} | {r['txt_cliprt_int8']:.0f} | "
                 f"{r['txt_cliprt_fp32'] / r['txt_plain_ort']:.2f}x | {r['txt_cliprt_int8'] / r['txt_plain_ort']:.2f}x |")
    L += ["", "## Parity in the same run (min cosine vs the PyTorch reference)", "",
          "| model | photos | image fp32 | text fp32 | image int8 | text int8 | towers run in int8 |",
          "|---|---|---|---|---|---|---|"]
    for p in results["parity"]:
        L.append(f"| {p['model']} | {p['photos']} | {p['image_min_cos_fp32']:.7f} | "
                 f"{p['text_min_cos_fp32']:.7f} | "
                 f"{p['image_min_cos_int8']:.5f} | {p['text_min_cos_int8']:.5f} | {p['int8_towers']} |")
    pp = results.get("preprocess") or {}
    if pp:
        r, c = pp["rates"], pp["min_cos_fast_vs_exact"]
        trained = pp.get("min_cos_fast_vs_exact_trained")
        extra = " min cosine, default model (trained EfficientNet-Lite0) |" if trained else ""
        L += ["", "## Preprocessing, one thread (images/s) and fast-vs-exact embedding cosine", "",
              "| photos | exact | fast | speed-up | min cosine, ViT-B-32 (random init) |" + extra,
              "|---|---|---|---|---|" + ("---|" if trained else "")]
        for label in ("sample", ">=1024px"):
            row = (f"| {label} | {r[label + '_exact']:.1f} | {r[label + '_fast']:.1f} | "
                   f"{r[label + '_fast'] / r[label + '_exact']:.2f}x | {c[label]:.5f} |")
            L.append(row + (f" {trained[label]:.5f} |" if trained else ""))
    with open(out_md, "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
