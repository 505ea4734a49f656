"""Image preprocessing on one core: cliprt exact vs fast vs the reference transform.

Photo sets (JPEG files, decoded from disk in every run):

* sample: the real photos of ../shared/data/imagenet-sample (web-sized, ~500 x 375).
* 1024 px / 2048 px: sample photos upscaled with PIL LANCZOS so their short side is 1024
  (or 2048) and re-encoded as JPEG quality 90 in a temporary folder. The sample has no
  large photos; upscaled ones decode and resize like camera photos of that size, but hold
  less fine detail, so fast mode's deviation on real large photos may be somewhat higher.

Methods, each decoding the file and producing the float32 (3, 224, 224) tensor for a
ViT-B/32-style spec (short side 224 + center crop, bicubic, OpenAI mean/std):

* reference: open_clip's eval transform on ``PIL.Image.open(path)`` (torch on 1 thread).
* cliprt exact: ``Preprocessor(spec)`` (the default; bit-identical to the reference).
* cliprt fast: ``Preprocessor(spec, mode="fast")`` (JPEG DCT-domain downscaling), and the
  same with ``draft_margin=1.0`` (the most aggressive setting) for comparison.

Throughput is per core: CPU time of the one thread doing the work (``time.thread_time``),
so waiting for a core on a shared machine does not count; every method handles a photo
before the next photo is taken, and each figure is the median over --repeats passes. Deviation of fast vs exact is in
normalised units (the tower's input): mean |d| over all pixels of a photo, averaged over
the photos, the worst photo's mean, and the largest single |d|. Parity: cliprt exact vs the
reference on all sample photos for three specs (CLIP shortest, SigLIP-style squash, and
Resize(256) + CenterCrop(224)): max |d| (0 means bit-identical tensors).

    python benchmarks/preprocess_bench.py [--n 300] [--n-big 100] [--n-huge 30] [--repeats 3]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, features

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "..", "shared", "data", "imagenet-sample")
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _specs():
    from cliprt.models import ImageSpec

    clip = ImageSpec((224, 224), "shortest", 224, "bicubic", True, *OPENAI)
    squash = ImageSpec((224, 224), "squash", 224, "bicubic", True, (0.5,) * 3, (0.5,) * 3)
    timm = ImageSpec((224, 224), "shortest", 256, "bicubic", True, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return {"CLIP shortest 224, bicubic": clip, "squash 224, bicubic": squash, "Resize(256) + crop 224, bicubic": timm}


def _reference(spec):
    import open_clip
    from open_clip.transform import MaybeConvertMode, MaybeToTensor
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

    if spec.resize_mode == "squash" or spec.resize_size == spec.size[0]:
        t = open_clip.image_transform(spec.size[0], is_train=False, mean=spec.mean, std=spec.std,
                                      resize_mode=spec.resize_mode, interpolation=spec.interpolation)
    else:
        t = Compose([Resize(spec.resize_size, interpolation=InterpolationMode.BICUBIC), CenterCrop(spec.size),
                     MaybeConvertMode(), MaybeToTensor(), Normalize(spec.mean, spec.std)])

    def run(path):
        with Image.open(path) as im:
            return t(im).numpy()
    return run


def upscale(paths, folder, short):
    os.makedirs(folder, exist_ok=True)
    out = []
    for p in paths:
        dst = os.path.join(folder, os.path.basename(p))
        with Image.open(p) as im:
            im = im.convert("RGB")
        k = short / min(im.size)
        im.resize((round(im.width * k), round(im.height * k)), Image.Resampling.LANCZOS).save(dst, "JPEG", quality=90)
        out.append(dst)
    return out


def timed_rates(methods, paths, repeats):
    """images/s of each method on one core: CPU time of this thread (time.thread_time), so
    time spent descheduled on a busy machine does not count; every method runs on a photo
    before the next photo (a burst of load hits all alike); median over repeats."""
    names = list(methods)
    totals = {name: [0.0] * repeats for name in names}
    for r in range(repeats):
        for i, p in enumerate(paths):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.thread_time()
                methods[name](p)
                totals[name][r] += time.thread_time() - t0
    return {name: len(paths) / statistics.median(ts) for name, ts in totals.items()}


def deviation(a_fn, b_fn, paths):
    means, worst = [], 0.0
    for p in paths:
        d = np.abs(a_fn(p) - b_fn(p))
        means.append(float(d.mean()))
        worst = max(worst, float(d.max()))
    return float(np.mean(means)), float(np.max(means)), worst


def median_size(paths):
    sizes = []
    for p in paths:
        with Image.open(p) as im:
            sizes.append(im.size)
    w, h = np.median(np.array(sizes), axis=0)
    return f"{int(w)}x{int(h)}"


def hardware() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores visible"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout
        return sha + (" (working tree has uncommitted changes)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="sample photos timed (parity uses all)")
    ap.add_argument("--n-big", type=int, default=100, help="photos upscaled to a 1024 px short side")
    ap.add_argument("--n-huge", type=int, default=30, help="photos upscaled to a 2048 px short side")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", default=os.path.join(HERE, "results", "preprocess.md"))
    args = ap.parse_args(argv)

    if not os.path.isdir(SAMPLE):
        print(f"sample photos not found at {os.path.abspath(SAMPLE)}", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(1)
    from cliprt.preprocess import Preprocessor

    specs = _specs()
    spec = specs["CLIP shortest 224, bicubic"]
    allp = sorted(os.path.join(SAMPLE, f) for f in os.listdir(SAMPLE) if f.endswith(".JPEG"))
    step = max(1, len(allp) // max(1, args.n))
    load_start = os.getloadavg()[0]
    t_start = time.perf_counter()

    exact = Preprocessor(spec)
    fast = Preprocessor(spec, mode="fast")
    fast1 = Preprocessor(spec, mode="fast", draft_margin=1.0)
    methods = {"reference (open_clip)": _reference(spec), "cliprt exact": exact, "cliprt fast": fast,
               "cliprt fast, draft_margin=1.0": fast1}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = [("sample", allp[::step][:args.n])]
        big_src = allp[::max(1, len(allp) // max(1, args.n_big))][:args.n_big]
        sets.append(("1024 px (upscaled)", upscale(big_src, os.path.join(tmp, "1024"), 1024)))
        if args.n_huge > 0:
            huge_src = allp[::max(1, len(allp) // args.n_huge)][:args.n_huge]
            sets.append(("2048 px (upscaled)", upscale(huge_src, os.path.join(tmp, "2048"), 2048)))
        for set_name, paths in sets:
            for p in paths[:3]:                     # warm-up: imports, caches
                for fn in methods.values():
                    fn(p)
            rates = timed_rates(methods, paths, args.repeats)
            ref_rate, exact_rate = rates["reference (open_clip)"], rates["cliprt exact"]
            dev = {name: deviation(methods[name], exact, paths)
                   for name in ("cliprt fast", "cliprt fast, draft_margin=1.0")}
            size = median_size(paths)
            for name, rate in rates.items():
                d = dev.get(name)
                rows.append((set_name, len(paths), size, name, rate, 1e3 / rate, rate / ref_rate, rate / exact_rate, d))
            print(f"{set_name}: done", flush=True)

    parity = []
    for label, s in specs.items():
        ref, pre = _reference(s), Preprocessor(s)
        worst, differing = 0.0, 0
        for p in allp:
            d = float(np.abs(pre(p) - ref(p)).max())
            worst = max(worst, d)
            differing += d > 0
        parity.append((label, len(allp), worst, differing))
        print(f"parity {label}: max |d| {worst:.3g}", flush=True)
    elapsed = time.perf_counter() - t_start
    load_end = os.getloadavg()[0]

    import open_clip
    import torchvision

    lines = [
        "# Image preprocessing on one core: cliprt exact / fast vs the reference",
        "",
        f"- date: {datetime.date.today().isoformat()}; commit: {commit()}",
        f"- hardware: {hardware()}; load average {load_start:.1f} at start, {load_end:.1f} at end "
        "(a shared machine: rates are thread CPU time, which waiting for a core does not inflate, "
        "but caches and memory bandwidth are shared, so absolute rates are still noisy; ratios "
        "within a set are fairer)",
        f"- software: Python {platform.python_version()}, Pillow {Image.__version__} "
        f"(libjpeg-turbo {features.version('jpg')}), numpy {np.__version__}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, open_clip {open_clip.__version__}",
        f"- spec timed: short side 224 + center crop 224, bicubic, OpenAI mean/std; one thread "
        f"(torch too); thread CPU time, median of {args.repeats} passes; each pass decodes every file "
        "from disk (page cache)",
        "- sets: `sample` = real ImageNet photos (web-sized); `1024 px` / `2048 px` = sample photos "
        "upscaled (PIL LANCZOS, short side 1024 / 2048) and re-encoded as JPEG quality 90",
        "- deviation: fast vs exact in normalised units: mean |d| per photo averaged over the set, the "
        "worst photo's mean |d|, and the largest single |d|",
        f"- run time {elapsed:.0f} s",
        "",
        "## Throughput (1 thread) and fast-mode deviation",
        "",
        "| set | photos | median size | method | img/s | ms/img | x reference | x exact "
        "| mean abs d | worst photo | max abs d |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for set_name, n, size, name, rate, ms, xr, xe, d in rows:
        if d is not None:
            dcols = f"{d[0]:.4f} | {d[1]:.4f} | {d[2]:.3f}"
        else:
            dcols = "0 | 0 | 0" if name == "cliprt exact" else " | | "
        lines.append(f"| {set_name} | {n} | {size} | {name} | {rate:.1f} | {ms:.2f} | {xr:.2f} | {xe:.2f} | {dcols} |")
    lines += [
        "",
        "## Parity: cliprt exact vs the reference on all sample photos",
        "",
        "| spec | photos | max abs d | photos with any difference |",
        "|---|---|---|---|",
    ]
    for label, n, worst, differing in parity:
        lines.append(f"| {label} | {n} | {worst:.3g} | {differing} |")
    lines += [
        "",
        "## Notes",
        "",
        "- cliprt exact runs the reference's own PIL operations (open, resize of the whole image, "
        "crop, convert) and the reference's float32 arithmetic in numpy instead of torch; it is "
        "bit-identical to the reference (table above), so it can only be as fast as PIL's resize.",
        "- cliprt fast decodes JPEGs at the strongest DCT reduction (1/2, 1/4, 1/8) that keeps the "
        "short side >= draft_margin x 224 (default 1.5) and resizes only the cropped region. On "
        "web-sized photos only the crop-region resize and the occasional large photo differ.",
        "- Upscaled photos hold less fine detail than camera photos of the same size, so fast mode's "
        "deviation on real large photos may be somewhat higher than in these sets.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
