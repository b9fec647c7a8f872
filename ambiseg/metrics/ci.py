"""CIMD's collective-insight (CI) score and its parts (Rahman et al., CVPR 2023).

- Combined sensitivity S_c: sensitivity of the union of the samples against the union of
  the annotations, TP / (TP + FN); 1 when the annotation union is empty (nothing to miss).
- D_max: maximum Dice matching, `matching.mdm`.
- Diversity agreement D_a: for a set of masks, V is the set of pixel-variances
  Var_p(m_i - m_j) over unordered pairs i < j (0/1 masks, population variance over the H*W
  pixels). With V_Y for the annotations and V_S for the samples,
  D_a = 1 - (|max V_Y - max V_S| + |min V_Y - min V_S|) / 2, in [0, 1]. A set with a
  single mask has no pairs; its V is taken as {0} (no spread).
- CI = harmonic mean of (S_c, D_max, D_a) = 3 / (1/S_c + 1/D_max + 1/D_a) by default; the
  formula printed in CIMD and used by third-party code, 3 S_c D_max D_a / (S_c + D_max + D_a),
  is `combine="cimd"`. The harmonic mean is the default because it is a mean: equal parts x
  give x and the score stays between the smallest and largest part, while the printed form
  gives x^2 and is not comparable with its parts. Both are 0 when a part is 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import ConfigError, closest
from ..registry import metrics
from .inputs import check_pair
from .matching import mdm_from
from .overlap import Overlaps, flatten, flatten_pair

__all__ = [
    "combined_sensitivity",
    "diversity_agreement",
    "ci_score",
    "combined_sensitivity_from",
    "diversity_agreement_from",
    "ci_score_from",
    "CI_COMBINATIONS",
]


def _harmonic(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    den = a * b + b * c + c * a
    return torch.where(den > 0, 3 * a * b * c / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))


def _product_over_sum(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    den = a + b + c
    return torch.where(den > 0, 3 * a * b * c / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))


CI_COMBINATIONS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "harmonic": _harmonic,
    "cimd": _product_over_sum,
}


def combined_sensitivity_from(samples: Tensor, annotations: Tensor) -> Tensor:
    """S_c `[B]` of flat 0/1 `samples [B, S, P]` against flat 0/1 `annotations [B, A, P]`."""
    union_s, union_a = samples.amax(dim=1), annotations.amax(dim=1)
    positives = union_a.sum(dim=1)
    hits = (union_s * union_a).sum(dim=1)
    return torch.where(positives > 0, hits / positives.clamp_min(1), torch.ones_like(positives))


def _pair_variances(inter: Tensor, sizes: Tensor, pixels: int) -> tuple[Tensor, Tensor]:
    """(min, max) over pairs i < j of Var_p(m_i - m_j) `[B]` from counts `[B, N, N]`, `[B, N]`."""
    differ = sizes[:, :, None] + sizes[:, None, :] - 2 * inter  # |m_i xor m_j|
    bias = (sizes[:, :, None] - sizes[:, None, :]) / pixels
    var = differ / pixels - bias * bias
    n = sizes.shape[1]
    if n < 2:
        zero = torch.zeros(sizes.shape[0], dtype=var.dtype, device=var.device)
        return zero, zero
    upper = torch.ones(n, n, dtype=torch.bool, device=var.device).triu(diagonal=1)
    low = torch.where(upper, var, torch.inf).amin(dim=(1, 2))
    high = torch.where(upper, var, -torch.inf).amax(dim=(1, 2))
    return low, high


def diversity_agreement_from(overlaps: Overlaps) -> Tensor:
    """D_a `[B]` from precomputed counts of samples and annotations."""
    s_low, s_high = _pair_variances(overlaps.inter_ss, overlaps.size_s, overlaps.pixels)
    y_low, y_high = _pair_variances(overlaps.inter_yy, overlaps.size_y, overlaps.pixels)
    return 1 - ((y_high - s_high).abs() + (y_low - s_low).abs()) / 2


def ci_score_from(overlaps: Overlaps, samples: Tensor, annotations: Tensor, *, combine: str = "harmonic") -> Tensor:
    """CI `[B]` from precomputed counts and the flat 0/1 masks `[B, S, P]`, `[B, A, P]` they came from."""
    if combine not in CI_COMBINATIONS:
        raise ConfigError(
            f"ci_score: unknown combine='{combine}'{closest(combine, CI_COMBINATIONS)}; "
            f"choose one of {', '.join(CI_COMBINATIONS)}"
        )
    parts = (
        combined_sensitivity_from(samples, annotations),
        mdm_from(overlaps.dice_sy),
        diversity_agreement_from(overlaps),
    )
    return CI_COMBINATIONS[combine](*(p.to(overlaps.inter_sy.dtype) for p in parts))


@metrics.register("combined_sensitivity", aliases=("s_c",), better="higher")
def combined_sensitivity(samples: Tensor, annotations: Tensor) -> Tensor:
    """S_c of `samples [B, S, H, W]` vs `annotations [B, A, H, W]` -> `[B]` (1 if no annotation has foreground)."""
    return combined_sensitivity_from(*(f.values for f in flatten_pair(*check_pair(samples, annotations))))


@metrics.register("diversity_agreement", aliases=("d_a",), better="higher")
def diversity_agreement(samples: Tensor, annotations: Tensor) -> Tensor:
    """D_a of `samples [B, S, H, W]` vs `annotations [B, A, H, W]` -> `[B]` in [0, 1]."""
    s, a = check_pair(samples, annotations)
    return diversity_agreement_from(Overlaps.of(s, a)[0])


@metrics.register("ci_score", aliases=("ci",), better="higher")
def ci_score(samples: Tensor, annotations: Tensor, *, combine: str = "harmonic") -> Tensor:
    """CI score of `samples [B, S, H, W]` vs `annotations [B, A, H, W]` -> `[B]`.

    Args:
        combine: "harmonic" (default, 3 / (1/S_c + 1/D_max + 1/D_a)) or "cimd"
            (3 S_c D_max D_a / (S_c + D_max + D_a), the formula printed in CIMD).
    """
    s, a = check_pair(samples, annotations)
    flat = flatten(s, a)
    (overlaps,) = Overlaps.from_flat(flat, s.shape[1], a.shape[1])
    return ci_score_from(overlaps, flat.values[:, : s.shape[1]], flat.values[:, s.shape[1] :], combine=combine)
