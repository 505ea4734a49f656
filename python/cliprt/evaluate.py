"""Evaluation: zero-shot classification accuracy and image-text retrieval recall.

Zero-shot data: a folder per class (DIR/<class name>/*.jpg), or a CSV with a `file` column
and either a `label` column (class names) or an `index` column (positions in a class-name
list, e.g. the built-in ImageNet names). Retrieval data: a CSV (image, caption), a JSON list
of {"image", "caption" | "captions"}, or a COCO captions file ({"images", "annotations"}).

Scores can also be computed through a cliprt.Index holding the class (or image) embeddings
in a reduced storage (i8, b1, ...), to measure what the storage costs in accuracy.

The held-out-class protocol of the embedded default model (`heldout_split`: classes whose
index is a multiple of `HELDOUT_EVERY` are held out) is defined here once, for
`cliprt eval zeroshot --every`, the default model's evaluation build and its study
(benchmarks/default_model_study.py); `zero_shot_topk` scores images among any subset of classes.
"""
from __future__ import annotations

import csv
import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .sources import IMAGE_EXTENSIONS

__all__ = ["load_classification", "zero_shot", "load_captions", "retrieval", "builtin_classnames",
           "evaluate_zeroshot", "evaluate_retrieval", "HELDOUT_EVERY", "heldout_split", "zero_shot_topk"]

# the held-out-class protocol: of the 1000 ImageNet-1k classes, those with index % 5 == 0 are held out
HELDOUT_EVERY = 5


class DataError(ValueError):
    """Evaluation data that cannot be read."""


def builtin_classnames(name: str) -> List[str]:
    if name != "imagenet":
        raise DataError(f"unknown built-in class-name list {name!r} (built in: imagenet)")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "imagenet_classes.txt")
    if not os.path.isfile(path):
        raise DataError(f"the built-in ImageNet class names are missing ({path})")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def read_classnames(spec: str) -> List[str]:
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if not names:
            raise DataError(f"class-name file {spec!r} is empty")
        return names
    return builtin_classnames(spec)


def load_classification(data: str, classnames: Optional[List[str]] = None
                        ) -> Tuple[List[str], List[int], List[str]]:
    """(image paths, label indices, class names)."""
    if os.path.isdir(data) and not os.path.isfile(os.path.join(data, "labels.csv")):
        classes = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
        if not classes:
            raise DataError(f"{data!r} has no class folders (expected DIR/<class>/*.jpg or a labels.csv)")
        names = classnames or [c.replace("_", " ") for c in classes]
        if len(names) != len(classes):
            raise DataError(f"{len(names)} class names for {len(classes)} class folders")
        paths, labels = [], []
        for i, c in enumerate(classes):
            for f in sorted(os.listdir(os.path.join(data, c))):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(data, c, f))
                    labels.append(i)
        if not paths:
            raise DataError(f"no images under {data!r}")
        return paths, labels, names
    csv_path = os.path.join(data, "labels.csv") if os.path.isdir(data) else data
    if not os.path.isfile(csv_path):
        raise DataError(f"no evaluation data at {data!r}")
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0]:
        raise DataError(f"{csv_path!r} needs a 'file' column and a 'label' or 'index' column")
    paths = [os.path.join(base, r["file"]) for r in rows]
    if "label" in rows[0]:
        names = classnames or sorted({r["label"] for r in rows})
        pos = {n: i for i, n in enumerate(names)}
        missing = sorted({r["label"] for r in rows} - set(pos))
        if missing:
            raise DataError(f"labels {missing[:5]} are not in the class-name list")
        return paths, [pos[r["label"]] for r in rows], names
    if "index" in rows[0]:
        if classnames is None:
            raise DataError(f"{csv_path!r} labels by class index: give the class names (--classnames FILE|imagenet)")
        labels = [int(r["index"]) for r in rows]
        if min(labels) < 0 or max(labels) >= len(classnames):
            raise DataError(f"class indices in {csv_path!r} fall outside the {len(classnames)} class names")
        return paths, labels, classnames
    raise DataError(f"{csv_path!r} needs a 'label' or 'index' column")


def _topk_exact(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _topk_index(queries: np.ndarray, database: np.ndarray, k: int, storage: str) -> np.ndarray:
    """`storage`: an index storage, optionally "@R" for the rescoring factor ("b1@0": codes
    only, no exact rescoring; default: the storage's default rescoring)."""
    from .index import Index, parse_storage_spec

    name, rescore = parse_storage_spec(storage)
    ix = Index(database.shape[1], metric="cosine", storage=name)
    ix.add(database)
    _, ids = ix.search(queries, k=k, rescore=rescore)
    return ids


def topk(queries: np.ndarray, database: np.ndarray, k: int, storage: Optional[str] = None) -> np.ndarray:
    k = min(k, len(database))
    if storage is None:
        return _topk_exact(queries.astype(np.float64) @ database.astype(np.float64).T, k)
    return _topk_index(queries, database, k, storage)


def zero_shot(image_emb: np.ndarray, labels: Sequence[int], class_emb: np.ndarray,
              classes: Optional[Sequence[int]] = None, storage: Optional[str] = None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy. `classes`: restrict to these class indices (images of other
    classes are dropped, and predictions are made among these classes only)."""
    labels = np.asarray(labels, np.int64)
    if classes is not None:
        classes = np.asarray(sorted(set(int(c) for c in classes)), np.int64)
        keep = np.isin(labels, classes)
        image_emb, labels = image_emb[keep], labels[keep]
        remap = {int(c): i for i, c in enumerate(classes)}
        labels = np.asarray([remap[int(l)] for l in labels], np.int64)
        class_emb = class_emb[classes]
    if len(labels) == 0:
        raise DataError("no images left to evaluate")
    pred = topk(image_emb, class_emb, 5, storage)
    return {"top1": float(np.mean(pred[:, 0] == labels)),
            "top5": float(np.mean((pred == labels[:, None]).any(axis=1))),
            "images": int(len(labels)), "classes": int(len(class_emb))}


def heldout_split(n: int = 1000, every: int = HELDOUT_EVERY) -> Tuple[np.ndarray, np.ndarray]:
    """(fitting classes, held-out classes) of `n` classes: every `every`-th class index
    (0, 5, 10, ...) is held out."""
    idx = np.arange(n)
    return idx[idx % every != 0], idx[idx % every == 0]


def zero_shot_topk(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray, classes: np.ndarray,
                   ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Top-k accuracy of classifying images among `classes` by cosine with their (bridged)
    text embeddings. image_emb (n, D), labels (n,) class indices, class_emb (len(classes), D);
    both are L2-normalised here, in float64, and every image is scored (see `zero_shot` for
    dropping the images of other classes)."""
    def unit(a):
        a = np.asarray(a, dtype=np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    predicted = np.asarray(classes)[topk(unit(image_emb), unit(class_emb), max(ks))]
    truth = np.asarray(labels)[:, None]
    return {k: float(np.mean((predicted[:, :k] == truth).any(axis=1))) for k in ks}


def load_captions(path: str) -> Tuple[List[str], List[str], List[int]]:
    """(image paths, captions, image index of each caption)."""
    base = os.path.dirname(os.path.abspath(path))
    pairs: List[Tuple[str, str]] = []
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if "image" not in r or "caption" not in r:
                    raise DataError(f"{path!r} needs 'image' and 'caption' columns")
                pairs.append((r["image"], r["caption"]))
    else:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read captions {path!r}: {e}") from None
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            files = {im["id"]: im["file_name"] for im in data["images"]}
            pairs = [(files[a["image_id"]], a["caption"]) for a in data["annotations"]]
        elif isinstance(data, list):
            for r in data:
                caps = r.get("captions") or [r.get("caption")]
                pairs += [(r["image"], c) for c in caps if c]
        else:
            raise DataError(f"{path!r} is neither a COCO captions file nor a list of image/caption records")
    if not pairs:
        raise DataError(f"no captions in {path!r}")
    images: List[str] = []
    pos: Dict[str, int] = {}
    owner: List[int] = []
    for im, _ in pairs:
        if im not in pos:
            pos[im] = len(images)
            images.append(im)
        owner.append(pos[im])
    return [os.path.join(base, im) for im in images], [c for _, c in pairs], owner


def retrieval(image_emb: np.ndarray, text_emb: np.ndarray, owner: Sequence[int],
              ks: Sequence[int] = (1, 5, 10), storage: Optional[str] = None) -> Dict[str, float]:
    """Recall@k, text->image (the caption's image in the top k) and image->text (any of the
    image's captions in the top k)."""
    owner = np.asarray(owner, np.int64)
    kmax = max(ks)
    t2i = topk(text_emb, image_emb, kmax, storage)
    i2t = topk(image_emb, text_emb, kmax, storage)
    out: Dict[str, float] = {}
    for k in ks:
        out[f"text_to_image_r@{k}"] = float(np.mean((t2i[:, :k] == owner[:, None]).any(axis=1)))
        hit = owner[np.clip(i2t[:, :k], 0, None)] == np.arange(len(image_emb))[:, None]
        out[f"image_to_text_r@{k}"] = float(np.mean((hit & (i2t[:, :k] >= 0)).any(axis=1)))
    return out


def _check_storages(storages: Sequence[str]) -> List[str]:
    from .index import parse_storage_spec

    storages = list(storages) or ["f32"]
    for s in storages:
        parse_storage_spec(s)
    return storages


def evaluate_zeroshot(encoder, data: str, classnames: Optional[List[str]] = None,
                      templates: Optional[Sequence[str]] = None, every: int = 0,
                      storages: Sequence[str] = ("f32",), progress: bool = False) -> Dict[str, object]:
    """Zero-shot top-1/top-5 of ``encoder`` on the labelled images of ``data`` (see
    :func:`load_classification`), scored through an index of each storage in ``storages``
    ("f32", "i8", "b1@0", ...). ``templates``: the prompts (default: the model's own).
    ``every`` > 0 keeps only the classes whose index is a multiple of it (the held-out
    protocol of the default model)."""
    from .zeroshot import class_embeddings, model_templates

    storages = _check_storages(storages)
    paths, labels, names = load_classification(data, classnames)
    templates = list(templates) if templates else model_templates(encoder.manifest)
    classes = heldout_split(len(names), every)[1].tolist() if every else None
    t0 = time.perf_counter()
    emb, idx, errors = encoder.encode_images(paths, on_error="skip", return_errors=True, progress=progress)
    cls_names = names if classes is None else [names[c] for c in classes]
    cls_emb = np.zeros((len(names), encoder.dim), np.float32)
    cls_emb[classes if classes is not None else slice(None)] = class_embeddings(encoder, cls_names, templates)
    lab = np.asarray(labels)[idx]
    results: Dict[str, object] = {"kind": "zeroshot", "data": data, "templates": len(templates),
                                  "failed_images": len(errors), "seconds": round(time.perf_counter() - t0, 2),
                                  "storage": {s: zero_shot(emb, lab, cls_emb, classes=classes, storage=s)
                                              for s in storages}}
    if every:
        results["classes_kept"] = f"index % {every} == 0"
    return results


def evaluate_retrieval(encoder, data: str, storages: Sequence[str] = ("f32",),
                       progress: bool = False) -> Dict[str, object]:
    """Text->image and image->text recall@k of ``encoder`` on the captioned images of
    ``data`` (see :func:`load_captions`), through an index of each storage."""
    storages = _check_storages(storages)
    images, captions, owner = load_captions(data)
    t0 = time.perf_counter()
    img, idx, errors = encoder.encode_images(images, on_error="skip", return_errors=True, progress=progress)
    if errors:
        raise DataError(f"{len(errors)} evaluation image(s) could not be read, e.g. {errors[0].message}")
    txt = encoder.encode_texts(captions)
    return {"kind": "retrieval", "data": data, "images": len(images), "captions": len(captions),
            "seconds": round(time.perf_counter() - t0, 2),
            "storage": {s: retrieval(img, txt, owner, storage=s) for s in storages}}
