"""Metrics: values computed by hand on 4x4 masks, properties, edge cases, validation, registry."""

from __future__ import annotations

import math

import pytest
import torch

from ambiseg.errors import ConfigError, DataError
from ambiseg.metrics import (
    better,
    ci_score,
    combined_sensitivity,
    dice,
    diversity_agreement,
    evaluate,
    ged,
    ged_terms,
    ged_true,
    ged_true_terms,
    hm_iou,
    iou,
    mdm,
    mode_mass,
    mode_tv,
    ncc,
    pairwise_dice,
    pairwise_iou,
    sample_diversity,
    stray_rate,
)
from ambiseg.registry import metrics


def mask(*pixels: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(4, 4, dtype=torch.bool)
    for r, c in pixels:
        m[r, c] = True
    return m


# A: top-left 2x2 block; B: top row; C: empty; D: rows 0-1, cols 0-2 (contains A).
A = mask((0, 0), (0, 1), (1, 0), (1, 1))
B = mask((0, 0), (0, 1), (0, 2), (0, 3))
C = mask()
D = mask((0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2))


def sets(*masks: torch.Tensor) -> torch.Tensor:
    """One image's mask set `[1, N, 4, 4]`."""
    return torch.stack(masks)[None]


def close(x: torch.Tensor, value: float) -> bool:
    return x.shape == (1,) and abs(x.item() - value) < 1e-6


def test_pairwise_iou_and_dice_by_hand():
    x, y = sets(A, B, C), sets(A, B, C, D)
    expected_iou = [[1, 1 / 3, 0, 2 / 3], [1 / 3, 1, 0, 3 / 7], [0, 0, 1, 0]]
    expected_dice = [[1, 1 / 2, 0, 4 / 5], [1 / 2, 1, 0, 3 / 5], [0, 0, 1, 0]]
    assert torch.allclose(pairwise_iou(x, y)[0], torch.tensor(expected_iou))
    assert torch.allclose(pairwise_dice(x, y)[0], torch.tensor(expected_dice))


def test_ged_and_terms_by_hand():
    s, y = sets(A, B), sets(D, C)
    terms = ged_terms(s, y)
    # d(A,D)=1/3, d(A,C)=1, d(B,D)=4/7, d(B,C)=1; d(A,B)=2/3; d(D,C)=1; self-pairs 0
    assert close(terms.cross, 61 / 84)
    assert close(terms.sample_diversity, 1 / 3)
    assert close(terms.annotation_diversity, 1 / 2)
    assert close(terms.ged, 13 / 21) and close(ged(s, y), 13 / 21) and close(sample_diversity(s, y), 1 / 3)


def test_matching_metrics_by_hand():
    s, y = sets(A, B), sets(D, C)
    assert close(hm_iou(s, y), 1 / 3)  # best assignment A-D (2/3) + B-C (0), mean over 2
    assert close(mdm(s, y), 2 / 5)  # D: max(4/5, 3/5); C: 0 for non-empty samples
    # lcm tiling: 3 samples, 2 annotations -> 6 x 6; two A and two C samples match exactly,
    # the two B samples take the third A (IoU 1/3) and the third C (0)
    assert close(hm_iou(sets(A, B, C), sets(A, C)), 13 / 18)


def test_ci_parts_and_score_by_hand():
    s, y = sets(A, B), sets(D, C)
    assert close(combined_sensitivity(s, y), 5 / 6)  # union(A, B) covers 5 of D's 6 pixels
    # Var(A - B) = 4/16 - 0; Var(D - C) = 6/16 - (6/16)^2 = 15/64 -> D_a = 1 - (1/64 + 1/64)/2
    assert close(diversity_agreement(s, y), 63 / 64)
    assert close(ci_score(s, y), 3 / (6 / 5 + 5 / 2 + 64 / 63))
    assert close(ci_score(s, y, combine="cimd"), 945 / 2129)


def test_ncc_by_hand():
    # mean m: 1 on (0,0),(0,1); 1/2 on (0,2),(0,3),(1,0),(1,1); E_ss is affine in m(1-m) and
    # E_sy_j affine in |Y_j - m|, so NCC is the mean of two Pearson correlations of those maps
    s, y = sets(A, B), sets(D, C)
    assert close(ncc(s, y), (20 / math.sqrt(1104) + 1 / math.sqrt(6)) / 2)


def test_mean_prediction_dice_iou_by_hand():
    s, y = sets(A, B), sets(D, C)  # 1 of 2 votes counts: majority = A | B (6 px, 5 inside D)
    assert close(dice(s, y), (5 / 6 + 0) / 2)
    assert close(iou(s, y), (5 / 7 + 0) / 2)
    assert close(dice(sets(A, A, B), sets(A)), 1.0)  # 2 of 3 votes needed: the majority is A
    assert close(dice(sets(A, B, C), sets(A)), 2 / 3)  # majority = A & B = (0,0),(0,1)
    assert close(dice(sets(C, C, A), sets(C)), 1.0)  # majority empty vs empty annotation


def test_truth_metrics_by_hand():
    probs = torch.tensor([[0.75, 0.25]])
    terms = ged_true_terms(sets(A, B), sets(A, C), probs)
    assert close(terms.cross, 0.5) and close(terms.annotation_diversity, 0.375)
    assert close(ged_true(sets(A, B), sets(A, C), probs), 7 / 24)
    # nearest modes: A->A, B->B, D->A (2/3 > 3/7 > 0), C->C (empty "saw nothing" mode)
    samples, modes = sets(A, B, D, C), sets(A, B, C)
    p = torch.tensor([[0.5, 0.25, 0.25]])
    assert torch.allclose(mode_mass(samples, modes, p), p) and close(mode_tv(samples, modes, p), 0.0)
    # a zero-probability mode is never nearest: the empty sample ties A and B at IoU 0 -> A
    p0 = torch.tensor([[0.75, 0.25, 0.0]])
    assert torch.allclose(mode_mass(samples, modes, p0), p0)
    assert close(mode_tv(sets(A, A), modes, p), 0.5)


def test_ged_true_with_uniform_weights_equals_ged():
    g = torch.Generator().manual_seed(3)
    s, y = torch.rand(2, 5, 8, 8, generator=g) > 0.5, torch.rand(2, 3, 8, 8, generator=g) > 0.6
    assert torch.allclose(ged_true(s, y, torch.full((2, 3), 1 / 3)), ged(s, y), atol=1e-6)


def test_properties_on_identical_sets():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 8, 8, generator=g) > 0.5
    x[1, 2] = False  # an empty mask among them
    assert torch.allclose(ged(x, x), torch.zeros(3), atol=1e-6)
    assert torch.allclose(hm_iou(x, x), torch.ones(3)) and torch.allclose(mdm(x, x), torch.ones(3))
    assert torch.allclose(hm_iou(x.repeat(1, 3, 1, 1), x), torch.ones(3))  # 12 samples, 4 annotations
    assert torch.allclose(diversity_agreement(x, x), torch.ones(3))
    y = torch.rand(3, 2, 8, 8, generator=g) > 0.3
    assert torch.allclose(ged(x, y), ged(y, x), atol=1e-6)  # GED is symmetric in its two sets


def test_edge_cases_empty_and_single():
    empty = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    assert torch.equal(ged(empty, empty), torch.zeros(2)) and torch.equal(hm_iou(empty, empty), torch.ones(2))
    assert torch.equal(combined_sensitivity(sets(A, B), sets(C, C)), torch.ones(1))  # nothing to miss
    assert close(mdm(sets(A), sets(C, C)), 0.0) and close(hm_iou(sets(A), sets(C)), 0.0)
    single = sets(A)  # one sample: no diversity, GED = 2 E[d] - E[d(Y,Y')]
    assert close(sample_diversity(single, sets(D)), 0.0) and close(ged(single, sets(D)), 2 / 3)


def test_ncc_constant_maps_give_zero_not_nan():
    same = sets(A, A, A)  # identical samples: E_ss is constant
    assert torch.equal(ncc(same, sets(D, C)), torch.zeros(1))
    soft = torch.full((1, 2, 4, 4), 0.3)
    assert torch.equal(ncc(soft, sets(D), soft=True), torch.zeros(1))


def test_bool_and_probability_inputs_agree():
    g = torch.Generator().manual_seed(1)
    probs_s, probs_y = torch.rand(2, 6, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    probs_s[0, 0, 0, 0] = 0.5  # exactly at the threshold counts as foreground
    soft = evaluate(probs_s, probs_y, counts=(2, 6), at=4)
    hard = evaluate(probs_s >= 0.5, (probs_y >= 0.5).to(torch.uint8), counts=(2, 6), at=4)
    assert soft.keys() == hard.keys()
    assert all(torch.equal(soft[k], hard[k]) for k in soft if k != "SoftShare")
    # SoftShare alone reads the probabilities: 0/1 masks have no soft pixel
    assert (soft["SoftShare"] > 0).all() and torch.equal(hard["SoftShare"], torch.zeros(2))


def test_evaluate_keys_counts_and_first_k_samples():
    g = torch.Generator().manual_seed(2)
    s, y = torch.rand(2, 40, 8, 8, generator=g) > 0.5, torch.rand(2, 4, 8, 8, generator=g) > 0.5
    out = evaluate(s, y)  # counts (16, 32, 100): 100 > S = 40 is skipped
    assert list(out) == [
        "GED16",
        "GED32",
        "Diversity16",
        "Diversity32",
        "HM-IoU16",
        "HM-IoU32",
        "MDM32",
        "CI32",
        "NCC32",
        "Dice",
        "IoU",
        "Stray",
        "MissedConsensus",
        "SoftShare",
    ]
    assert all(v.shape == (2,) and v.dtype == torch.float32 for v in out.values())
    assert torch.allclose(out["GED16"], ged(s[:, :16], y), atol=1e-6)
    assert torch.allclose(out["HM-IoU32"], hm_iou(s[:, :32], y)) and torch.allclose(out["MDM32"], mdm(s[:, :32], y))
    assert torch.allclose(out["CI32"], ci_score(s[:, :32], y)) and torch.allclose(out["NCC32"], ncc(s[:, :32], y))
    assert torch.allclose(out["Dice"], dice(s, y)) and torch.allclose(out["IoU"], iou(s, y))
    small = evaluate(s[:, :8], y, counts=(4, 16), at=32)  # point families clip to S = 8
    assert list(small) == [
        "GED4",
        "Diversity4",
        "HM-IoU4",
        "MDM8",
        "CI8",
        "NCC8",
        "Dice",
        "IoU",
        "Stray",
        "MissedConsensus",
        "SoftShare",
    ]
    assert torch.equal(out["Stray"], stray_rate(s, y)) and torch.equal(small["Stray"], stray_rate(s[:, :8], y))


def test_evaluate_with_truth():
    s, modes, p = sets(A, B, D, C), sets(A, B, C), torch.tensor([[0.5, 0.25, 0.25]])
    out = evaluate(s, sets(A, B), counts=(2, 4), at=4, modes=modes, probs=p)
    assert list(out)[-4:] == ["TrueGED2", "TrueGED4", "ModeTV2", "ModeTV4"]
    assert torch.allclose(out["TrueGED4"], ged_true(s, modes, p)) and close(out["ModeTV4"], 0.0)
    assert torch.allclose(out["ModeTV2"], mode_tv(s[:, :2], modes, p))  # A, B: mass (1/2, 1/2, 0)
    assert better("TrueGED4") == "lower" and better("HM-IoU32") == "higher" and better("Diversity16") == "neither"
    assert better("Stray") == better("MissedConsensus") == better("SoftShare") == "lower"


def test_validation_errors_name_shapes():
    s, y = torch.zeros(2, 3, 8, 8), torch.zeros(2, 4, 8, 8)
    with pytest.raises(ConfigError, match=r"\(2, 3, 8, 8\).*\(3, 4, 8, 8\).*B \(images\)"):
        ged(s, torch.zeros(3, 4, 8, 8))
    with pytest.raises(ConfigError, match=r"\(2, 3, 8, 8\).*\(2, 4, 8, 6\).*disagree on W"):
        evaluate(s, torch.zeros(2, 4, 8, 6))
    with pytest.raises(ConfigError, match=r"annotations must be \[B, A, H, W\].*\(4, 8, 8\)"):
        hm_iou(s, torch.zeros(4, 8, 8))
    with pytest.raises(ConfigError, match="must be a torch.Tensor"):
        mdm(s.numpy(), y)
    with pytest.raises(ConfigError, match="empty axis"):
        ged(torch.zeros(2, 0, 8, 8), y)
    with pytest.raises(DataError, match="NaN"):
        ged(torch.full((2, 3, 8, 8), float("nan")), y)
    with pytest.raises(ConfigError, match=r"exceeds the 3 samples.*counts=\(3,\)"):
        evaluate(s, y, counts=(16, 32))
    with pytest.raises(ConfigError, match="positive ints"):
        evaluate(s, y, counts=(0,))
    with pytest.raises(ConfigError, match="both modes"):
        evaluate(s, y, counts=(3,), modes=y)
    with pytest.raises(DataError, match="rows summing to 1"):
        mode_mass(s, y, torch.full((2, 4), 0.3))
    with pytest.raises(ConfigError, match=r"probs must be a \[B, K\] = \(2, 4\)"):
        ged_true(s, y, torch.full((2, 3), 1 / 3))
    with pytest.raises(ConfigError, match="did you mean 'cimd'"):
        ci_score(s, y, combine="cimdd")
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        ncc(s + 2, y, soft=True)


def test_registry_holds_every_per_image_metric():
    names = {
        "ged",
        "sample_diversity",
        "hm_iou",
        "mdm",
        "combined_sensitivity",
        "diversity_agreement",
        "ci_score",
        "ncc",
        "dice",
        "iou",
        "stray_rate",
        "missed_consensus",
        "soft_share",
    }
    assert names <= set(metrics.names())
    s, y = sets(A, B), sets(D, C)
    assert torch.equal(metrics.create("ci", s, y, combine="cimd"), ci_score(s, y, combine="cimd"))
    assert torch.equal(metrics.create("ncc", s, y, soft="false"), ncc(s, y))  # CLI strings are coerced
    assert metrics.get("ged").info["better"] == "lower" and metrics.get("diversity").name == "sample_diversity"
    assert all(metrics.get(name).info["better"] == "lower" for name in ("stray_rate", "missed_consensus", "soft_share"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_evaluate_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(4)
    s, y = torch.rand(2, 12, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    y[1, 0] = 0  # a rater who marks nothing: MissedConsensus is NaN on image 1
    cpu, gpu = evaluate(s, y, counts=(4, 12), at=8), evaluate(s.cuda(), y.cuda(), counts=(4, 12), at=8)
    assert all(
        gpu[k].device.type == "cuda" and torch.allclose(gpu[k].cpu(), cpu[k], atol=1e-5, equal_nan=True) for k in cpu
    )
    assert cpu["MissedConsensus"][1].isnan()
