"""The linear text-to-image bridge: ridge regression from text embeddings to image-feature targets.

The embedded default model (`default_model`) joins a sentence-embedding tower to an image
classifier's feature space with a linear map W fitted without images: X holds one
prompt-ensembled text embedding per class (`ensemble`), Y the matching L2-normalised
classifier rows (`classifier_targets`), and W = argmin ||X W - Y||^2 + lambda ||W||^2
(`fit_bridge`; `ridge_path` for several lambdas from one SVD).

numpy only, in float64: the tests and benchmarks/default_model_study.py use it without the
export toolchain (torch is never imported here).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

__all__ = ["l2n", "ridge_path", "fit_bridge", "ensemble", "classifier_targets"]


def l2n(a: np.ndarray) -> np.ndarray:
    """float64 rows (along the last axis) scaled to unit L2 norm (zero rows stay zero)."""
    a = np.asarray(a, dtype=np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def _check_xy(x, y):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"text_emb (n, d_in) and targets (n, d_out) must have the same n, got {x.shape}, {y.shape}")
    return x, y


def ridge_path(text_emb: np.ndarray, targets: np.ndarray, lambdas: Sequence[float]) -> List[np.ndarray]:
    """`fit_bridge` for several lambdas from one SVD: with X = U S V^T,
    W(lambda) = V diag(s / (s^2 + lambda)) U^T Y (never forms X^T X)."""
    x, y = _check_xy(text_emb, targets)
    if not all(lam > 0 for lam in lambdas):
        raise ValueError(f"lambdas must be positive, got {list(lambdas)}")
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    return [vt.T @ ((s / (s * s + lam))[:, None] * uty) for lam in lambdas]


def fit_bridge(text_emb: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    """Ridge regression without intercept, in float64:
    W = argmin ||X W - Y||^2 + lam ||W||^2 = (X^T X + lam I)^-1 X^T Y.
    X: (n, d_in) text embeddings, Y: (n, d_out) targets -> W (d_in, d_out)."""
    return ridge_path(text_emb, targets, [lam])[0]


def ensemble(prompt_emb: np.ndarray) -> np.ndarray:
    """(templates, classes, d) prompt embeddings -> (classes, d): the normalised mean of the
    normalised template embeddings (prompt ensembling)."""
    return l2n(l2n(prompt_emb).mean(axis=0))


def classifier_targets(classifier_weight: np.ndarray) -> np.ndarray:
    """The bridge targets: L2-normalised classifier rows (classes, features)."""
    return l2n(classifier_weight)
