"""PHiSeg's normalised cross-correlation (NCC) of expected-error maps (Baumgartner et al. 2019).

With the binary cross-entropy CE(p, q) = -(q log(p + eps) + (1 - q) log(1 - p + eps)) of a
prediction p against a target q, eps = 1e-8 (PHiSeg code), and the mean prediction
m = mean_i S_i:
- E_ss = mean_i CE(S_i, m), the expected error of the samples against their own mean;
- E_sy_j = mean_i CE(S_i, Y_j), the expected error against annotator j;
- NCC = (1/A) sum_j Pearson(E_ss, E_sy_j), the correlation over the H*W pixels.

For 0/1 samples, with c = -log(1 + eps) and K = log((1 + eps) / eps) > 0, the maps are
E_ss = c + 2K m(1 - m) and E_sy_j = c + K |Y_j - m| exactly; Pearson's r is unchanged by
increasing affine maps, so the binary path correlates m(1 - m) with |Y_j - m|. Both are 0
outside the union of all masks, which lets the cropped `FlatMasks` stand in for the image.

Pearson's r is undefined when a map is constant (e.g. all samples identical, so E_ss shows
no uncertainty); such a pair contributes r = 0 (no measurable association), never NaN.
"Constant" means a range of at most 1e-12 times the map's largest magnitude (float64), so
summation-order rounding cannot turn a constant map into a spurious correlation.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from ..errors import ConfigError, DataError
from ..registry import metrics
from .inputs import check_pair
from .overlap import FlatMasks, flatten_pair

__all__ = ["ncc", "ncc_from", "ncc_soft_from", "pearson", "CONSTANT_TOLERANCE"]

CONSTANT_TOLERANCE = 1e-12


def _constant(x: Tensor, padding: int) -> Tensor:
    """Whether each map `x [..., P]` (plus `padding` implicit zeros) is constant up to rounding."""
    high, low = x.amax(-1), x.amin(-1)
    if padding:
        high, low = high.clamp_min(0), low.clamp_max(0)
    return high - low <= CONSTANT_TOLERANCE * torch.maximum(high.abs(), low.abs())


def pearson(x: Tensor, y: Tensor, *, padding: int = 0) -> Tensor:
    """Pearson correlation over the last axis of `x [..., P]`, `y [..., P]`; 0 where either is constant.

    `padding` counts further pixels where both maps are 0, not stored.
    """
    n = x.shape[-1] + padding
    mx, my = x.sum(-1, keepdim=True) / n, y.sum(-1, keepdim=True) / n
    xc, yc = x - mx, y - my
    mx, my = mx.squeeze(-1), my.squeeze(-1)
    cov = (xc * yc).sum(-1) + padding * mx * my
    den = ((xc.square().sum(-1) + padding * mx.square()) * (yc.square().sum(-1) + padding * my.square())).sqrt()
    r = cov / den.clamp_min(torch.finfo(den.dtype).tiny)
    constant = _constant(x, padding) | _constant(y, padding)
    return torch.where(constant, torch.zeros_like(r), r.clamp(-1, 1))


def ncc_from(samples: FlatMasks, annotations: FlatMasks) -> Tensor:
    """NCC `[B]` of flat 0/1 `samples` (`[B, S, P]`) vs 0/1 `annotations` (`[B, A, P]`), same crop."""
    mean = samples.values.sum(dim=1).double() / samples.values.shape[1]  # [B, P]; sums of 0/1 are exact
    spread = mean * (1 - mean)  # E_ss up to c + 2K (.)
    error = (annotations.values.double() - mean[:, None]).abs()  # E_sy_j up to c + K (.)
    return pearson(spread[:, None].expand_as(error), error, padding=samples.padding).mean(dim=1).float()


def ncc_soft_from(samples: Tensor, annotations: Tensor, *, eps: float = 1e-8) -> Tensor:
    """NCC `[B]` of sample probabilities `[B, S, P]` vs 0/1 `annotations [B, A, P]` (full images).

    CE is linear in its target, so both maps need only the per-pixel means of
    log(S_i + eps) and log(1 - S_i + eps) over samples: O((S + A) P), no loop.
    """
    s, y = samples.double(), annotations.double()
    mean = s.mean(dim=1)
    log_fg, log_bg = (s + eps).log().mean(dim=1), (1 - s + eps).log().mean(dim=1)
    e_ss = -(mean * log_fg + (1 - mean) * log_bg)  # [B, P]
    e_sy = -(y * log_fg[:, None] + (1 - y) * log_bg[:, None])  # [B, A, P]
    return pearson(e_ss[:, None].expand_as(e_sy), e_sy).mean(dim=1).float()


@metrics.register("ncc", better="higher")
def ncc(samples: Tensor, annotations: Tensor, *, soft: bool = False, eps: float = 1e-8) -> Tensor:
    """NCC of `samples [B, S, H, W]` vs `annotations [B, A, H, W]` -> `[B]` in [-1, 1].

    Args:
        soft: use the samples as probabilities (PHiSeg's code takes probability maps) instead
            of binarising them at 0.5; they must then lie in [0, 1]. Annotations are always binarised.
        eps: the CE's log offset (PHiSeg: 1e-8); it cancels out for binarised samples.
    """
    if not 0 < eps < 1:
        raise ConfigError(f"ncc: eps must lie in (0, 1), got {eps}")
    s, a = check_pair(samples, annotations)
    if not soft:
        return ncc_from(*flatten_pair(s, a))
    probs = rearrange(samples.to(torch.float64), "b s h w -> b s (h w)")
    if probs.min() < 0 or probs.max() > 1:
        raise DataError(
            f"ncc(soft=True) needs sample probabilities in [0, 1], got values in "
            f"[{probs.min().item():.3g}, {probs.max().item():.3g}]; pass sigmoid outputs or soft=False"
        )
    return ncc_soft_from(probs, rearrange(a, "b a h w -> b a (h w)"), eps=eps)
