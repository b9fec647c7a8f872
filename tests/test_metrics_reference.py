"""Vectorised metrics against the naive per-pair reference (tests/metrics_reference.py).

Hypothesis draws small mask sets with every edge case in reach: empty masks, all-empty
sets, a single sample or annotator, S not a multiple of A, 1-pixel images.
"""

from __future__ import annotations

import metrics_reference as ref
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ambiseg import metrics as M

EXAMPLES = settings(max_examples=40, deadline=None)


@st.composite
def mask_sets(draw, max_samples: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples [B, S, H, W]`, `annotations [B, A, H, W]` bool, some masks blanked out."""
    b, s, a = draw(st.integers(1, 2)), draw(st.integers(1, max_samples)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    samples = draw(arrays(np.bool_, (b, s, h, w)))
    annotations = draw(arrays(np.bool_, (b, a, h, w)))
    samples[draw(arrays(np.bool_, (b, s)))] = False
    annotations[draw(arrays(np.bool_, (b, a)))] = False
    return torch.from_numpy(samples), torch.from_numpy(annotations)


def agree(vectorised: torch.Tensor, naive: np.ndarray) -> bool:
    """Same shape and values; NaN (a metric undefined on an image) must match NaN."""
    return vectorised.shape == naive.shape and np.allclose(vectorised.numpy(), naive, atol=1e-5, equal_nan=True)


@EXAMPLES
@given(mask_sets())
def test_pairwise_iou_and_dice(pair):
    s, y = pair
    iou, dice = M.pairwise_iou(s, y), M.pairwise_dice(s, y)
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            for j in range(y.shape[1]):
                assert abs(iou[b, i, j].item() - ref.iou(s[b, i].numpy(), y[b, j].numpy())) < 1e-6
                assert abs(dice[b, i, j].item() - ref.dice(s[b, i].numpy(), y[b, j].numpy())) < 1e-6


@EXAMPLES
@given(mask_sets())
def test_ged_terms(pair):
    terms, naive = M.ged_terms(*pair), ref.per_image(ref.ged_terms, *pair)
    for column, value in enumerate((terms.cross, terms.sample_diversity, terms.annotation_diversity, terms.ged)):
        assert agree(value, naive[:, column])


@EXAMPLES
@given(mask_sets())
def test_matching(pair):
    assert agree(M.hm_iou(*pair), ref.per_image(ref.hm_iou, *pair))
    assert agree(M.mdm(*pair), ref.per_image(ref.mdm, *pair))


@EXAMPLES
@given(mask_sets())
def test_ci_and_parts(pair):
    assert agree(M.combined_sensitivity(*pair), ref.per_image(ref.combined_sensitivity, *pair))
    assert agree(M.diversity_agreement(*pair), ref.per_image(ref.diversity_agreement, *pair))
    for combine in M.CI_COMBINATIONS:
        assert agree(M.ci_score(*pair, combine=combine), ref.per_image(ref.ci_score, *pair, combine=combine))


@EXAMPLES
@given(mask_sets(), st.data())
def test_ncc_binary_and_soft(pair, data):
    s, y = pair
    assert agree(M.ncc(s, y), ref.per_image(ref.ncc, s, y))
    # probabilities on a grid of twentieths (avoids values that vanish next to eps)
    soft = torch.from_numpy(data.draw(arrays(np.int64, tuple(s.shape), elements=st.integers(0, 20)))) / 20
    naive = np.array([ref.ncc(soft[b].numpy(), y[b].numpy()) for b in range(s.shape[0])])
    assert agree(M.ncc(soft, y, soft=True), naive)


@EXAMPLES
@given(mask_sets(), st.data())
def test_plausibility(pair, data):
    s, y = pair
    assert agree(M.stray_rate(s, y), ref.per_image(ref.stray_rate, s, y))
    assert agree(M.missed_consensus(s, y), ref.per_image(ref.missed_consensus, s, y))
    # probabilities on a grid of twentieths: 0.1 and 0.9 themselves are drawn (not soft)
    soft = torch.from_numpy(data.draw(arrays(np.int64, tuple(s.shape), elements=st.integers(0, 20)))) / 20
    naive = np.array([ref.soft_share(soft[b].numpy(), y[b].numpy()) for b in range(s.shape[0])])
    assert agree(M.soft_share(soft, y), naive)
    assert agree(M.soft_share(s, y), ref.per_image(ref.soft_share, s, y))  # bool: 0, or NaN where U_s is empty


@EXAMPLES
@given(mask_sets())
def test_mean_prediction_dice_iou(pair):
    naive = ref.per_image(ref.consensus, *pair)
    assert agree(M.dice(*pair), naive[:, 0]) and agree(M.iou(*pair), naive[:, 1])


@EXAMPLES
@given(mask_sets(max_samples=9), st.integers(1, 9), st.integers(1, 9))
def test_evaluate(pair, k1, at):
    s, y = pair
    counts = (k1, s.shape[1])
    fast, slow = M.evaluate(s, y, counts=counts, at=at), ref.evaluate(s, y, counts=counts, at=at)
    assert list(fast) == list(slow)
    assert all(agree(fast[key], slow[key]) for key in fast)


@EXAMPLES
@given(mask_sets(), st.data())
def test_truth_metrics(pair, data):
    s, modes = pair
    b, k = modes.shape[:2]
    weights = data.draw(arrays(np.int64, (b, k), elements=st.integers(0, 3)))
    weights[:, 0] += weights.sum(axis=1) == 0  # every row needs some mass
    probs = torch.from_numpy(weights / weights.sum(axis=1, keepdims=True)).float()
    naive_terms = np.array([ref.ged_terms(s[i].numpy(), modes[i].numpy(), probs[i].double().numpy()) for i in range(b)])
    assert agree(M.ged_true(s, modes, probs), naive_terms[:, 3])
    naive_mass = np.stack([ref.mode_mass(s[i].numpy(), modes[i].numpy(), probs[i].numpy()) for i in range(b)])
    assert agree(M.mode_mass(s, modes, probs), naive_mass)
    assert agree(M.mode_tv(s, modes, probs), 0.5 * np.abs(naive_mass - probs.numpy()).sum(axis=1))


@pytest.mark.parametrize(("samples", "annotations"), [(1, 4), (3, 2), (5, 3), (4, 4)])
def test_all_empty_annotations_and_lcm_shapes(samples, annotations):
    g = torch.Generator().manual_seed(samples * 10 + annotations)
    s = torch.rand(2, samples, 6, 6, generator=g) > 0.6
    empty = torch.zeros(2, annotations, 6, 6, dtype=torch.bool)
    for y in (empty, torch.rand(2, annotations, 6, 6, generator=g) > 0.5):
        options = {"counts": (1, samples), "at": samples}
        fast, slow = M.evaluate(s, y, **options), ref.evaluate(s, y, **options)
        assert all(agree(fast[key], slow[key]) for key in fast)


def test_cropped_blobs_with_different_boxes_per_image():
    """Small discs placed differently per image: each image keeps its own crop, NCC its padding."""
    g = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    centres = torch.tensor([[5.0, 6.0], [17.0, 12.0], [12.0, 19.0]])[:, None, :, None, None]
    jitter = centres + 2 * torch.randn(3, 10, 2, 1, 1, generator=g)
    radius = 1 + 3 * torch.rand(3, 10, 1, 1, generator=g)
    masks = (yy - jitter[:, :, 0]) ** 2 + (xx - jitter[:, :, 1]) ** 2 < radius**2
    s, y = masks[:, :7], masks[:, 7:]
    s[2, 3] = False  # an empty sample
    fast, slow = M.evaluate(s, y, counts=(3, 7), at=5), ref.evaluate(s, y, counts=(3, 7), at=5)
    assert list(fast) == list(slow) and all(agree(fast[key], slow[key]) for key in fast)
    assert M.ncc(s, y).abs().min() > 0  # non-trivial correlations, not the constant-map rule
