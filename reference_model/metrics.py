"""Sample-set metrics for the class-removal benchmark: class histogram, KL to a target, Frechet distance."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
import torch


def class_histogram(pred: torch.Tensor | np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Normalised histogram of predicted labels (sums to 1)."""
    p = np.asarray(pred, dtype=np.int64).reshape(-1)
    h = np.bincount(p, minlength=num_classes).astype(np.float64)
    return h / max(h.sum(), 1.0)


def kl_divergence(p: Sequence[float], q: Sequence[float], eps: float = 1e-10) -> float:
    """KL(p || q) in nats; q is floored at ``eps`` (an empty class in q gives a large, finite value)."""
    p = np.asarray(p, np.float64)
    q = np.maximum(np.asarray(q, np.float64), eps)
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def kl_uniform(hist: Sequence[float], classes: Optional[Iterable[int]] = None, eps: float = 1e-10) -> float:
    """KL(uniform over ``classes`` (default: all) || hist), in nats.

    For class removal pass the kept classes (the paper's "ideal" histogram); ``hist`` is the generated histogram
    as is (mass left on the removed class is not renormalised away)."""
    hist = np.asarray(hist, np.float64)
    cls = list(range(len(hist))) if classes is None else list(classes)
    u = np.zeros_like(hist)
    u[cls] = 1.0 / len(cls)
    return kl_divergence(u, hist, eps)


def gaussian_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (FID formula, on any feature space)."""
    import warnings

    from scipy import linalg

    diff = mu1 - mu2
    with warnings.catch_warnings():  # rank-deficient covariances (dead ReLU features) are expected and harmless
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            off = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def frechet_distance_feats(f1, f2) -> float:
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
