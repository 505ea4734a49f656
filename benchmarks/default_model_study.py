"""Zero-shot study of the embedded default model's bridge on the ImageNet sample.

    python benchmarks/default_model_study.py [--sample ../shared/data/imagenet-sample]

Embeds the class prompts and the 1000 sample images once (PyTorch towers, the reference
preprocessing), then reports, for the held-out-class protocol (bridge fitted on the classes
with index % 5 != 0, their 200 held-out classes' images classified among those 200) and the
all-classes fit (every image among all 1000 classes):

* the plain baseline: ridge on 8-template ensembles, raw (uncentred) image features;
* the shipped recipe (cliprt.export.default_model): the same ridge, centred image features;
* the lambda sweep of both, and the data-free cross-validation over the fitting classes
  (classifier rows standing in for images), which is *not* used to choose lambda;
* references that are not shipped: the classifier itself (rows as text embeddings), and a
  non-linear kernel-ridge bridge;
* the image-image cosine spread and the softmax calibration at the shipped logit scale.

Nothing is fitted or tuned on the images or on the held-out classes; the images are only
scored. Takes ~2-3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from cliprt.evaluate import heldout_split, zero_shot_topk  # noqa: E402
from cliprt.export import default_model as dm  # noqa: E402
from cliprt.export.bridge import fit_bridge, l2n, ridge_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "imagenet-sample"))
SWEEP = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def image_features(model, sample: str):
    """Raw pooled features (n, 1280) and labels of the sample, through the reference preprocessing."""
    import torch
    from PIL import Image

    with open(os.path.join(sample, "labels.csv"), newline="") as f:
        rows = [(int(r["index"]), r["file"]) for r in csv.DictReader(f)]
    pre = dm.reference_preprocess()
    feats = []
    with torch.no_grad():
        for i in range(0, len(rows), 50):
            x = torch.from_numpy(np.stack([pre(Image.open(os.path.join(sample, f))) for _, f in rows[i:i + 50]]))
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).double().numpy())
    return np.concatenate(feats), np.array([c for c, _ in rows])


def cv_rows(class_emb, targets, lambdas, folds=5, seed=0):
    """Data-free k-fold CV over classes: a held-out fold's bridged prompts must retrieve their
    own classifier row among the fold's rows. Mean and standard error per lambda."""
    fold = np.random.default_rng(seed).permutation(len(class_emb)) % folds
    s = np.zeros((len(lambdas), folds))
    for j in range(folds):
        tr, te = fold != j, fold == j
        for i, w in enumerate(ridge_path(class_emb[tr], targets[tr], lambdas)):
            sc = l2n(class_emb[te] @ w) @ targets[te].T
            s[i, j] = np.mean(sc.argmax(1) == np.arange(int(te.sum())))
    return s.mean(1), s.std(1, ddof=1) / math.sqrt(folds)


def kernel_bridge(x_fit, y_fit, x_new, tau=10.0, lam=0.1):
    """Non-linear reference: kernel ridge with k(a, b) = exp(tau (a.b - 1)) on the prompt embeddings."""
    k = np.exp(tau * (x_fit @ x_fit.T - 1))
    return np.exp(tau * (x_new @ x_fit.T - 1)) @ np.linalg.solve(k + lam * np.eye(len(x_fit)), y_fit)


def row(name, r):
    return f"| {name} | {r['heldout_top1']:.3f} | {r['heldout_top5']:.3f} | {r['all_top1']:.3f} | {r['all_top5']:.3f} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", default=SAMPLE)
    args = ap.parse_args()
    t0 = time.perf_counter()
    ing = dm.prepare()
    t_prep = time.perf_counter() - t0
    raw, labels = image_features(ing.image_model, args.sample)
    t_img = time.perf_counter() - t0 - t_prep
    centred = l2n(raw - ing.feature_mean)
    rawn = l2n(raw)
    x, y = ing.class_emb, ing.targets
    fit_cls, held = heldout_split(dm.N_CLASSES)
    keep = np.isin(labels, held)

    print(f"prepare (load, {len(dm.TEMPLATES) * 1000} prompts, fit): {t_prep:.1f} s; 1000 images: {t_img:.1f} s\n")
    print("| bridge | held-out top-1 | held-out top-5 | all-1000 top-1 | all-1000 top-5 |")
    print("|---|---|---|---|---|")
    base = dm.evaluate_heldout(rawn, labels, x, y, lam=0.1)
    ours = dm.evaluate_heldout(centred, labels, x, y)
    print(row("plain ridge, lambda 0.1, raw image features (baseline)", base))
    print(row(f"shipped: ridge, lambda {dm.LAMBDA}, centred image features", ours))
    upper = {}
    h = zero_shot_topk(centred[keep], labels[keep], y[held], held)
    a = zero_shot_topk(centred, labels, y, np.arange(1000))
    upper.update(heldout_top1=h[1], heldout_top5=h[5], all_top1=a[1], all_top5=a[5])
    print(row("reference: the classifier's own rows as text embeddings", upper))
    kb_h = zero_shot_topk(centred[keep], labels[keep], kernel_bridge(x[fit_cls], y[fit_cls], x[held]), held)
    print(f"| reference, not linear: kernel-ridge bridge exp(10(a.b-1)), lambda 0.1 | {kb_h[1]:.3f} | "
          f"{kb_h[5]:.3f} | - | - |")

    print("\nlambda sweep (held-out top-1 / top-5 / all-1000 top-1):\n")
    print("| lambda | raw features | centred features | CV over the 800 fitting classes | CV over all 1000 |")
    print("|---|---|---|---|---|")
    cv800, se800 = cv_rows(x[fit_cls], y[fit_cls], SWEEP)
    cv1000, se1000 = cv_rows(x, y, SWEEP)
    for i, lam in enumerate(SWEEP):
        r0 = dm.evaluate_heldout(rawn, labels, x, y, lam=lam)
        r1 = dm.evaluate_heldout(centred, labels, x, y, lam=lam)
        print(f"| {lam:g} | {r0['heldout_top1']:.3f} / {r0['heldout_top5']:.3f} / {r0['all_top1']:.3f} | "
              f"{r1['heldout_top1']:.3f} / {r1['heldout_top5']:.3f} / {r1['all_top1']:.3f} | "
              f"{cv800[i]:.3f} ± {se800[i]:.3f} | {cv1000[i]:.3f} ± {se1000[i]:.3f} |")

    off = ~np.eye(len(raw), dtype=bool)
    print(f"\nmean image-image cosine: raw {float((rawn @ rawn.T)[off].mean()):.3f}, "
          f"centred {float((centred @ centred.T)[off].mean()):.3f}; data-free feature mean vs sample mean: "
          f"cosine {float(l2n(ing.feature_mean) @ l2n(raw.mean(0))):.4f}")
    w = fit_bridge(x, y, dm.LAMBDA)
    logits = dm.LOGIT_SCALE * centred @ l2n(x @ w).T
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    p = np.exp(logp)
    nll = float(-logp[np.arange(1000), labels].mean())
    print(f"softmax at logit_scale {dm.LOGIT_SCALE:g} (all 1000 classes): NLL {nll:.3f}, "
          f"mean max-probability {float(p.max(1).mean()):.3f} vs top-1 {ours['all_top1']:.3f}")
    print("\n" + json.dumps({"baseline": base, "shipped": ours}, indent=1))


if __name__ == "__main__":
    main()
