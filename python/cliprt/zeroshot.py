"""Zero-shot classification with prompt ensembles.

    clf = cliprt.ZeroShotClassifier(enc, ["dog", "cat", "car"])
    labels = clf.predict(["a.jpg", "b.jpg"])              # int64 class indices
    probs = clf.predict_proba(["a.jpg"])                  # float32 (n, classes)

A class's embedding is the (optionally weighted) mean of the L2-normalised embeddings of
its prompts (each template formatted with the class name), normalised again. Images are
scored by cosine similarity with every class embedding, turned into probabilities with the
model's own scoring: softmax over ``logit_scale * cosine`` for CLIP-style models, an
independent sigmoid of ``logit_scale * cosine + logit_bias`` for SigLIP-style models.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["ZeroShotClassifier", "DEFAULT_TEMPLATES", "class_embeddings", "model_templates"]

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "itap of a {}.",
)


def model_templates(manifest) -> list:
    """The prompt templates a model package recommends (its manifest's
    provenance.zero_shot_templates, or the templates its text bridge was fitted with), else
    DEFAULT_TEMPLATES."""
    prov = manifest.provenance or {}
    for templates in (prov.get("zero_shot_templates"), (prov.get("bridge") or {}).get("templates")):
        if isinstance(templates, list) and templates and all(isinstance(t, str) and "{}" in t for t in templates):
            return list(templates)
    return list(DEFAULT_TEMPLATES)


def _check_templates(templates: Sequence[str]) -> list:
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("templates must not be empty")
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise ValueError(f"template {t!r} must be a string containing '{{}}'")
    return templates


def class_embeddings(encoder, classnames: Sequence[str], templates: Sequence[str],
                     weights: Optional[Sequence[float]] = None, batch_size: Optional[int] = None) -> np.ndarray:
    """float32 (classes, dim): per class, the weighted mean of its normalised prompt
    embeddings, normalised."""
    templates = _check_templates(templates)
    w = np.ones(len(templates), np.float64) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(templates),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"template_weights must be {len(templates)} non-negative finite numbers, not all zero")
    prompts = [t.format(c) for c in classnames for t in templates]
    emb = encoder.encode_texts(prompts, batch_size=batch_size).astype(np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    emb = emb.reshape(len(classnames), len(templates), -1)
    mean = np.einsum("t,ctd->cd", w / w.sum(), emb)
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return mean.astype(np.float32)


class ZeroShotClassifier:
    """Classifies images among `classnames` with prompt-ensembled text embeddings."""

    def __init__(self, encoder, classnames: Sequence[str], templates: Optional[Sequence[str]] = None,
                 template_weights: Optional[Sequence[float]] = None):
        """`templates`: format strings with "{}"; None takes the model's own (see
        `model_templates`)."""
        classnames = [classnames] if isinstance(classnames, str) else list(classnames)
        if not classnames:
            raise ValueError("classnames must not be empty")
        for c in classnames:
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"class name {c!r} must be a non-empty string")
        self.encoder = encoder
        self.classnames = classnames
        self.templates = _check_templates(model_templates(encoder.manifest) if templates is None else templates)
        self.template_weights = None if template_weights is None else list(template_weights)
        m = encoder.manifest
        self.scoring = m.scoring
        self.logit_scale = float(m.logit_scale)
        self.logit_bias = float(m.logit_bias)
        self._class_emb: Optional[np.ndarray] = None

    @property
    def class_embeddings(self) -> np.ndarray:
        """float32 (classes, dim), computed on first use and cached."""
        if self._class_emb is None:
            self._class_emb = class_embeddings(self.encoder, self.classnames, self.templates, self.template_weights)
        return self._class_emb

    def _embeddings(self, images, embeddings) -> np.ndarray:
        if (images is None) == (embeddings is None):
            raise ValueError("give either images or embeddings=")
        if embeddings is not None:
            e = np.asarray(embeddings)
            if e.ndim != 2 or e.shape[1] != self.encoder.dim or not np.issubdtype(e.dtype, np.floating):
                raise ValueError(f"embeddings must be a float array (n, {self.encoder.dim}), got {e.dtype} {e.shape}")
            if not np.all(np.isfinite(e)):
                raise ValueError("embeddings contain NaN or Inf")
            return e.astype(np.float32, copy=False)
        return self.encoder.encode_images(images)

    def scores(self, images=None, *, embeddings=None) -> np.ndarray:
        """Cosine similarity of each image with each class: float32 (n, classes)."""
        e = self._embeddings(images, embeddings)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return (e @ self.class_embeddings.T).astype(np.float32)

    def predict_proba(self, images=None, *, embeddings=None) -> np.ndarray:
        """float32 (n, classes): softmax(logit_scale * cos) for CLIP-style models (rows sum
        to 1), sigmoid(logit_scale * cos + logit_bias) for SigLIP-style models."""
        logits = self.scores(images, embeddings=embeddings).astype(np.float64) * self.logit_scale
        if self.scoring == "sigmoid":
            return (1.0 / (1.0 + np.exp(-(logits + self.logit_bias)))).astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, images=None, *, embeddings=None) -> np.ndarray:
        """int64 (n,): the best class of each image (ties: lowest index)."""
        return np.argmax(self.scores(images, embeddings=embeddings), axis=1).astype(np.int64)

    def topk(self, images=None, k: int = 5, *, embeddings=None):
        """(indices int64 (n, k), probabilities float32 (n, k)), best first."""
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        p = self.predict_proba(images, embeddings=embeddings)
        k = min(int(k), p.shape[1])
        idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return idx.astype(np.int64), np.take_along_axis(p, idx, axis=1)
