"""`evaluate`: every metric of one sample set, keyed `<Family><k>` for the first k samples.

Key convention (the leaderboard prints these keys):
- sweep families at every k in `counts` with k <= S (larger counts are skipped):
  `GED<k>`, `Diversity<k>` (E[d(S, S')], reported beside every GED), `HM-IoU<k>`, and with a
  true distribution `TrueGED<k>`, `ModeTV<k>`;
- point families once, at k = min(at, S): `MDM<k>`, `CI<k>`, `NCC<k>`;
- `Dice`, `IoU`: the majority mask of all S samples against each annotator (no count);
- `Stray`, `MissedConsensus`, `SoftShare`: the plausibility of single samples (`plausibility`),
  means over all S samples (no count: each is an average over samples, whose expectation does
  not depend on S, unlike GED's); `SoftShare` reads the samples' probabilities, not their
  binarisation, and `MissedConsensus`, `SoftShare` are NaN on images where they are undefined.
Count k always means the first k samples of the S given, so GED16 and GED32 share 16 samples.
All pairwise counts come from one matrix product over all S samples.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

from torch import Tensor

from ..errors import ConfigError
from .ci import ci_score_from
from .consensus import consensus_from
from .ged import GEDTerms, ged_terms_from
from .inputs import check_pair
from .matching import hm_iou_from, mdm_from
from .ncc import ncc_from
from .overlap import FlatMasks, Overlaps, flatten
from .plausibility import covered_from, missed_consensus_from, soft_share_from, stray_rate_from
from .truth import check_truth, mode_mass_from, mode_tv_from

__all__ = ["evaluate", "better", "SWEEP", "POINT", "TRUTH_SWEEP", "PLAUSIBILITY", "BETTER"]


class _View:
    """The first k samples of one evaluation: flat masks, their counts and (optionally) the
    counts against the true modes."""

    def __init__(
        self,
        k: int,
        samples: FlatMasks,
        annotations: FlatMasks,
        overlaps: Overlaps,
        truth: Overlaps | None,
        probs: Tensor | None,
    ) -> None:
        self.samples, self.annotations, self.probs = samples[:k], annotations, probs
        self.overlaps = overlaps.head(k)
        self.truth = truth.head(k) if truth is not None else None

    @functools.cached_property
    def terms(self) -> GEDTerms:
        return ged_terms_from(self.overlaps)

    @property
    def true_overlaps(self) -> Overlaps:
        """The counts against the true modes (only for an evaluation given `modes`)."""
        if self.truth is None:
            raise ConfigError("evaluate: the truth metrics need the true modes; pass modes= and probs=")
        return self.truth

    @property
    def true_probs(self) -> Tensor:
        """The probabilities [B, K] of the true modes (only for an evaluation given `probs`)."""
        if self.probs is None:
            raise ConfigError("evaluate: the truth metrics need the mode probabilities; pass modes= and probs=")
        return self.probs


Family = Callable[[_View], Tensor]
SWEEP: dict[str, Family] = {
    "GED": lambda v: v.terms.ged,
    "Diversity": lambda v: v.terms.sample_diversity,
    "HM-IoU": lambda v: hm_iou_from(v.overlaps.iou_sy),
}
POINT: dict[str, Family] = {
    "MDM": lambda v: mdm_from(v.overlaps.dice_sy),
    "CI": lambda v: ci_score_from(v.overlaps, v.samples.values, v.annotations.values),
    "NCC": lambda v: ncc_from(v.samples, v.annotations),
}
TRUTH_SWEEP: dict[str, Family] = {
    "TrueGED": lambda v: ged_terms_from(v.true_overlaps, weights=v.true_probs).ged,
    "ModeTV": lambda v: mode_tv_from(mode_mass_from(v.true_overlaps.iou_sy, v.true_probs), v.true_probs),
}
PLAUSIBILITY = ("Stray", "MissedConsensus", "SoftShare")  # keys without a count, all S samples
BETTER = {
    "GED": "lower",
    "Diversity": "neither",
    "HM-IoU": "higher",
    "MDM": "higher",
    "CI": "higher",
    "NCC": "higher",
    "Dice": "higher",
    "IoU": "higher",
    "TrueGED": "lower",
    "ModeTV": "lower",
    "Stray": "lower",
    "MissedConsensus": "lower",
    "SoftShare": "lower",
}


def better(key: str) -> str:
    """ "lower", "higher" or "neither" for an `evaluate` key such as "GED32" or "Dice"."""
    family = re.sub(r"\d+$", "", key)
    if family not in BETTER:
        raise ConfigError(f"unknown metric key '{key}'; families: {', '.join(BETTER)}")
    return BETTER[family]


def _check_counts(counts: Sequence[int], at: int, available: int) -> list[int]:
    values = list(counts) if isinstance(counts, (list, tuple)) else None
    if not values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in values):
        raise ConfigError(f"evaluate: counts must be a non-empty tuple of positive ints, got {counts!r}")
    if isinstance(at, bool) or not isinstance(at, int) or at < 1:
        raise ConfigError(f"evaluate: at must be a positive int, got {at!r}")
    usable = sorted({k for k in values if k <= available})
    if not usable:
        raise ConfigError(
            f"evaluate: every count in {tuple(values)} exceeds the {available} samples given "
            f"(samples [B, S, H, W] with S = {available}); "
            f"draw more samples or pass counts=({available},)"
        )
    return usable


def evaluate(
    samples: Tensor,
    annotations: Tensor,
    counts: Sequence[int] = (16, 32, 100),
    *,
    at: int = 32,
    modes: Tensor | None = None,
    probs: Tensor | None = None,
) -> dict[str, Tensor]:
    """All metrics per image for `samples [B, S, H, W]` vs `annotations [B, A, H, W]`.

    Args:
        counts: sample counts of the sweep families (GED, Diversity, HM-IoU, TrueGED, ModeTV);
            counts above S are skipped, and an error is raised when none is left.
        at: sample count of the point families (MDM, CI, NCC), clipped to S.
        modes, probs: the true distribution `[B, K, H, W]`, `[B, K]` (both or neither) for
            TrueGED and ModeTV.

    Returns:
        `{key: Tensor[B]}` in the order sweep families (counts ascending), point families,
        Dice, IoU, Stray, MissedConsensus, SoftShare, truth families; see the module docstring
        for the key convention. Only SoftShare differs between probabilities and their binarisation.
    """
    s, a = check_pair(samples, annotations)
    if (modes is None) != (probs is None):
        raise ConfigError("evaluate: pass both modes [B, K, H, W] and probs [B, K] for the truth metrics, or neither")
    sweep = _check_counts(counts, at, s.shape[1])
    total, sets, p = s.shape[1], [s, a], None
    if modes is not None:
        _, m, p = check_truth(s, modes, probs)
        sets.append(m)
    flat = flatten(*sets)  # [B, S + A (+ K), P_box]: the one float copy every metric reads
    overlaps, *truth_overlaps = Overlaps.from_flat(flat, *(x.shape[1] for x in sets))
    truth = truth_overlaps[0] if truth_overlaps else None
    fs, fa = flat[:total], flat[total : total + a.shape[1]]
    views = {k: _View(k, fs, fa, overlaps, truth, p) for k in sweep}
    out = {f"{name}{k}": fn(view) for name, fn in SWEEP.items() for k, view in views.items()}
    point = min(at, total)
    view = views.get(point) or _View(point, fs, fa, overlaps, truth, p)
    out.update({f"{name}{point}": fn(view) for name, fn in POINT.items()})
    out["Dice"], out["IoU"] = consensus_from(fs.values, fa.values)
    union = a.any(dim=1)
    out["Stray"] = stray_rate_from(s, union)
    out["MissedConsensus"] = missed_consensus_from(overlaps.size_s, overlaps.size_y)
    out["SoftShare"] = soft_share_from(samples, s, union, covered_from(fs.values, fa.values))
    if truth is not None:
        out.update({f"{name}{k}": fn(view) for name, fn in TRUTH_SWEEP.items() for k, view in views.items()})
    return out
