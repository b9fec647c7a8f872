"""Naive per-pair reference of every metric, written from the definitions (docs/metrics.md).

One image at a time, one mask pair at a time, numpy only: the slow, obviously-correct
counterpart of `ambiseg.metrics` for tests (tests/test_metrics_reference.py) and for the
speed benchmark (benchmarks/test_metrics_speed.py). Masks are bool arrays `[N, H, W]`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

EPS = 1e-8


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * np.logical_and(a, b).sum() / total


def mean_distance(xs, ys, wx=None, wy=None) -> float:
    """sum_ij wx_i wy_j (1 - IoU(x_i, y_j)); uniform weights by default."""
    wx = np.full(len(xs), 1 / len(xs)) if wx is None else wx
    wy = np.full(len(ys), 1 / len(ys)) if wy is None else wy
    total = 0.0
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            total += wx[i] * wy[j] * (1 - iou(x, y))
    return total


def ged_terms(samples, annotations, weights=None) -> tuple[float, float, float, float]:
    """(cross, sample diversity, annotation diversity, GED)."""
    cross = mean_distance(samples, annotations, wy=weights)
    ss = mean_distance(samples, samples)
    yy = mean_distance(annotations, annotations, weights, weights)
    return cross, ss, yy, 2 * cross - ss - yy


def hm_iou(samples, annotations) -> float:
    size = math.lcm(len(samples), len(annotations))
    xs = np.tile(samples, (size // len(samples), 1, 1))
    ys = np.tile(annotations, (size // len(annotations), 1, 1))
    cost = np.array([[1 - iou(x, y) for y in ys] for x in xs])
    rows, cols = linear_sum_assignment(cost)
    return float(np.mean(1 - cost[rows, cols]))


def mdm(samples, annotations) -> float:
    return float(np.mean([max(dice(s, y) for s in samples) for y in annotations]))


def combined_sensitivity(samples, annotations) -> float:
    union_s, union_y = np.any(samples, axis=0), np.any(annotations, axis=0)
    tp = np.logical_and(union_s, union_y).sum()
    fn = np.logical_and(~union_s, union_y).sum()
    return 1.0 if tp + fn == 0 else tp / (tp + fn)


def _variances(masks) -> list[float]:
    values = [
        np.var(masks[i].astype(float) - masks[j].astype(float))
        for i in range(len(masks))
        for j in range(i + 1, len(masks))
    ]
    return values or [0.0]


def diversity_agreement(samples, annotations) -> float:
    vs, vy = _variances(samples), _variances(annotations)
    return 1 - (abs(max(vy) - max(vs)) + abs(min(vy) - min(vs))) / 2


def ci_score(samples, annotations, combine="harmonic") -> float:
    parts = (
        combined_sensitivity(samples, annotations),
        mdm(samples, annotations),
        diversity_agreement(samples, annotations),
    )
    if combine == "harmonic":
        return 0.0 if min(parts) == 0 else 3 / sum(1 / p for p in parts)
    return 0.0 if sum(parts) == 0 else 3 * np.prod(parts) / sum(parts)


def _cross_entropy(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    return -(target * np.log(pred + EPS) + (1 - target) * np.log(1 - pred + EPS))


def _constant(x: np.ndarray) -> bool:
    """Equal up to rounding (the documented NCC rule): range <= 1e-12 of the largest magnitude."""
    return np.ptp(x) <= 1e-12 * np.abs(x).max()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if _constant(a) or _constant(b):
        return 0.0
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (a.std() * b.std()))


def ncc(samples, annotations) -> float:
    s = np.asarray(samples, dtype=float)
    mean = s.mean(axis=0)
    e_ss = np.mean([_cross_entropy(x, mean) for x in s], axis=0)
    scores = []
    for y in annotations:
        e_sy = np.mean([_cross_entropy(x, y.astype(float)) for x in s], axis=0)
        scores.append(_pearson(e_ss, e_sy))
    return float(np.mean(scores))


def consensus(samples, annotations) -> tuple[float, float]:
    """(Dice, IoU) of the majority mask (vote share >= 0.5), averaged over annotators."""
    majority = np.mean(np.asarray(samples, dtype=float), axis=0) >= 0.5
    return (
        float(np.mean([dice(majority, y) for y in annotations])),
        float(np.mean([iou(majority, y) for y in annotations])),
    )


def mode_mass(samples, modes, probs) -> np.ndarray:
    mass = np.zeros(len(modes))
    for s in samples:
        best, best_k = -1.0, -1
        for k, m in enumerate(modes):
            if probs[k] > 0 and iou(s, m) > best:
                best, best_k = iou(s, m), k
        mass[best_k] += 1 / len(samples)
    return mass


def stray_rate(samples, annotations) -> float:
    """Share of samples with an 8-connected component (labelled sample by sample) outside the raters' union."""
    union = np.any(annotations, axis=0)
    stray = 0
    for s in samples:
        labels, count = ndimage.label(s, structure=np.ones((3, 3)))
        stray += any(not union[labels == label].any() for label in range(1, count + 1))
    return stray / len(samples)


def missed_consensus(samples, annotations) -> float:
    if not all(y.any() for y in annotations):
        return math.nan
    return float(np.mean([not s.any() for s in samples]))


def soft_share(probs, annotations) -> float:
    """Pooled share of pixels with 0.1 < p < 0.9 in each sample's foreground or the raters' union."""
    union = np.any(annotations, axis=0)
    soft = total = 0
    for p in probs:
        region = (p >= 0.5) | union
        total += region.sum()
        soft += (region & (p > 0.1) & (p < 0.9)).sum()
    return soft / total if total else math.nan


def per_image(fn, *tensors, **kwargs) -> np.ndarray:
    """Apply a per-image reference `fn` to `[B, N, H, W]` tensors (binarised at 0.5)."""
    arrays = [(t >= 0.5).cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy() for t in tensors]
    return np.array([fn(*(a[b] for a in arrays), **kwargs) for b in range(arrays[0].shape[0])])


def evaluate(samples: torch.Tensor, annotations: torch.Tensor, counts=(16, 32, 100), at: int = 32) -> dict:
    """The keys of `ambiseg.metrics.evaluate`, each metric recomputed from scratch, pair by pair."""
    total = samples.shape[1]
    ks = sorted({k for k in counts if k <= total})
    out = {}
    terms = {k: per_image(ged_terms, samples[:, :k], annotations) for k in ks}
    out.update({f"GED{k}": terms[k][:, 3] for k in ks})
    out.update({f"Diversity{k}": terms[k][:, 1] for k in ks})
    out.update({f"HM-IoU{k}": per_image(hm_iou, samples[:, :k], annotations) for k in ks})
    point = min(at, total)
    out[f"MDM{point}"] = per_image(mdm, samples[:, :point], annotations)
    out[f"CI{point}"] = per_image(ci_score, samples[:, :point], annotations)
    out[f"NCC{point}"] = per_image(ncc, samples[:, :point], annotations)
    both = per_image(consensus, samples, annotations)
    out["Dice"], out["IoU"] = both[:, 0], both[:, 1]
    out["Stray"] = per_image(stray_rate, samples, annotations)
    out["MissedConsensus"] = per_image(missed_consensus, samples, annotations)
    probs, raters = samples.numpy(), (annotations >= 0.5).numpy()  # the probabilities as given
    out["SoftShare"] = np.array([soft_share(probs[b], raters[b]) for b in range(len(probs))])
    return out
