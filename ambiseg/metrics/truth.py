"""Metrics against a known true distribution of masks (the synthetic dataset's weighted modes).

The truth of an image is `modes [B, K, H, W]` with `probs [B, K]` (rows sum to 1, entries
may be 0; a mode may be empty: "the annotator saw nothing"). Modes with probability 0 are
not part of the distribution: they add nothing to the expectations and are never "nearest".

- `ged_true`: GED against the exact mixture, weights in place of annotator averages:
  E[d(S, Y)] = mean_i sum_k p_k d(S_i, M_k), E[d(Y, Y')] = sum_k sum_l p_k p_l d(M_k, M_l),
  E[d(S, S')] as in `ged` (all ordered pairs); d = 1 - IoU.
- `mode_mass`: `[B, K]` fraction of samples whose nearest mode (highest IoU, ties to the
  lowest index) is mode k, so the mass a method puts on a rare mode is measurable.
- `mode_tv`: total variation 0.5 sum_k |mode_mass_k - p_k| in [0, 1]; 0 when the samples
  hit the modes with exactly the true frequencies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .ged import GEDTerms, ged_terms_from
from .inputs import check_pair
from .overlap import Overlaps, iou_from_counts, pair_counts

__all__ = [
    "check_truth",
    "ged_true_terms",
    "ged_true",
    "mode_mass",
    "mode_tv",
    "mode_mass_from",
    "mode_tv_from",
    "PROB_TOLERANCE",
]

PROB_TOLERANCE = 1e-4


def check_truth(samples: Tensor, modes: Tensor, probs: object) -> tuple[Tensor, Tensor, Tensor]:
    """Validate and binarise `samples`, `modes`; `probs` checked as a `[B, K]` distribution.

    Returns (bool samples, bool modes, float32 probs on the samples' device).
    """
    s, m = check_pair(samples, modes, names=("samples", "modes"), axes=("[B, S, H, W]", "[B, K, H, W]"))
    b, k = m.shape[:2]
    if not isinstance(probs, Tensor) or tuple(probs.shape) != (b, k):
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ConfigError(f"probs must be a [B, K] = ({b}, {k}) tensor matching modes {tuple(m.shape)}, got {shape}")
    p = probs.to(s.device, torch.float32)
    bad = ~torch.isfinite(p).all(dim=1) | (p < 0).any(dim=1) | ((p.sum(dim=1) - 1).abs() > PROB_TOLERANCE)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise DataError(
            f"probs [B, K] must be non-negative with rows summing to 1; bad rows {rows} "
            f"(first 5), e.g. row {rows[0]} = {[round(x, 4) for x in p[rows[0]].tolist()]}"
        )
    return s, m, p


def ged_true_terms(samples: Tensor, modes: Tensor, probs: Tensor) -> GEDTerms:
    """GED terms of `samples [B, S, H, W]` against the mixture (`modes [B, K, H, W]`, `probs [B, K]`)."""
    s, m, p = check_truth(samples, modes, probs)
    return ged_terms_from(Overlaps.of(s, m)[0], weights=p)


def ged_true(samples: Tensor, modes: Tensor, probs: Tensor) -> Tensor:
    """Squared GED against the true mixture, per image `[B]`."""
    return ged_true_terms(samples, modes, probs).ged


def mode_mass_from(iou: Tensor, probs: Tensor) -> Tensor:
    """`[B, K]` share of samples nearest to each mode, from sample x mode IoU `[B, S, K]`."""
    k = iou.shape[-1]
    candidate = (probs > 0)[:, None, :]
    score = torch.where(candidate, iou, torch.full_like(iou, -1.0))
    best = score.amax(dim=-1, keepdim=True)
    index = torch.arange(k, device=iou.device).expand_as(score)
    nearest = torch.where(score == best, index, k).amin(dim=-1)  # first index attaining the max
    return torch.nn.functional.one_hot(nearest, k).to(iou.dtype).mean(dim=1)


def mode_mass(samples: Tensor, modes: Tensor, probs: Tensor) -> Tensor:
    """Fraction of `samples [B, S, H, W]` whose nearest mode is each of `modes [B, K, H, W]` -> `[B, K]`."""
    s, m, p = check_truth(samples, modes, probs)
    return mode_mass_from(iou_from_counts(*pair_counts(s, m)), p)


def mode_tv(samples: Tensor, modes: Tensor, probs: Tensor) -> Tensor:
    """Total variation between `mode_mass` and `probs`, per image `[B]` in [0, 1]."""
    return mode_tv_from(mode_mass(samples, modes, probs), probs.to(samples.device, torch.float32))


def mode_tv_from(mass: Tensor, probs: Tensor) -> Tensor:
    """0.5 sum_k |mass_k - p_k| `[B]` from `mode_mass` and `probs`, both `[B, K]`."""
    return 0.5 * (mass - probs.to(mass)).abs().sum(dim=1)
