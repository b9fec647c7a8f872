"""The built-in synthetic dataset: determinism, item layout, mode structure, learnable probabilities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ambiseg.data import MODE_NAMES, build, make_example
from ambiseg.errors import ConfigError


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_items_have_the_documented_layout():
    ds = build("synthetic", split="val", size=32, num_annotators=5, sizes=(3, 4, 2))
    assert (len(ds), ds.in_channels, ds.image_size, ds.image_shape, ds.num_annotators) == (4, 1, 32, (32, 32), 5)
    item = ds[1]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["masks"].shape == (5, 32, 32) and item["masks"].dtype == torch.uint8
    assert item["modes"].shape == (len(MODE_NAMES), 32, 32) and item["modes"].dtype == torch.uint8
    assert item["mode_probs"].dtype == torch.float32 and abs(float(item["mode_probs"].sum()) - 1) < 1e-6
    assert set(item["masks"].unique().tolist()) <= {0, 1}
    assert (item["id"], item["group"]) == ("synthetic-val-00001", "synthetic-val-00001")
    # every annotator mask is exactly one of the modes
    for mask in item["masks"]:
        assert any(torch.equal(mask, mode) for mode in item["modes"])


def test_an_item_depends_only_on_seed_split_and_index():
    a = build("synthetic", split="all", size=32, sizes=(3, 2, 2))
    val = build("synthetic", split="val", size=32, sizes=(5, 2, 9))
    assert _same(a[3], val[0]) and _same(a[4], val[1])
    again = build("synthetic", split="all", size=32, sizes=(3, 2, 2))
    assert all(_same(a[i], again[i]) for i in range(len(a)))
    other = build("synthetic", split="all", size=32, sizes=(3, 2, 2), seed=1)
    assert not torch.equal(a[0]["image"], other[0]["image"])
    assert not torch.equal(a[0]["image"], a[3]["image"])  # train 0 and val 0 differ
    # the number of annotators changes only the masks, not the image or its truth
    six = build("synthetic", split="train", size=32, sizes=(3, 2, 2), num_annotators=6)
    assert torch.equal(six[2]["image"], a[2]["image"]) and torch.equal(six[2]["modes"], a[2]["modes"])
    assert torch.equal(build("synthetic", size=32, limit=2)[1]["image"], a[1]["image"])


def test_modes_nest_and_the_satellite_is_separate():
    for index in range(20):
        ex = make_example(0, "train", index, size=48)
        tight, loose, sat, empty = (m.astype(bool) for m in ex.modes)
        assert tight.any() and not empty.any()
        assert (tight & ~loose).sum() == 0 and loose.sum() > tight.sum()
        extra = sat & ~loose  # the satellite
        assert (loose & ~sat).sum() == 0 and extra.sum() >= 3
        assert 0.06 - 1e-9 <= ex.mode_probs[2] <= 0.14 + 1e-9 and 0.05 - 1e-9 <= ex.mode_probs[3] <= 0.20 + 1e-9


def test_probabilities_are_readable_from_the_image():
    """Halo brightness predicts p(loose | lesion), core contrast predicts p(empty)."""
    halo, core, p_loose, p_empty, sat_gain = [], [], [], [], []
    for index in range(60):
        ex = make_example(3, "train", index, size=64)
        tight, loose, sat = (m.astype(bool) for m in ex.modes[:3])
        background = ~sat
        base = ex.image[background].mean()
        ring = loose & ~tight
        halo.append(ex.image[ring].mean() - base)
        core.append(ex.image[tight].mean() - base)
        p = ex.mode_probs
        p_loose.append(p[1] / (p[0] + p[1]))
        p_empty.append(p[3])
        sat_gain.append(ex.image[sat & ~loose].mean() - base)
    assert np.corrcoef(halo, p_loose)[0, 1] > 0.5
    assert np.corrcoef(core, p_empty)[0, 1] < -0.5
    assert min(core) > 0.15  # the lesion is clearly visible
    assert 0.04 < np.mean(sat_gain) < np.mean(core) / 2  # the satellite is visible but faint


def test_annotators_follow_the_mode_probabilities():
    ds = build("synthetic", split="train", size=32, sizes=(300, 1, 1))
    counts = np.zeros(len(MODE_NAMES))
    expected = np.zeros(len(MODE_NAMES))
    for i in range(len(ds)):
        item = ds[i]
        for mask in item["masks"]:
            counts[next(k for k, m in enumerate(item["modes"]) if torch.equal(mask, m))] += 1
        expected += item["mode_probs"].numpy() * ds.num_annotators
    # multinomial: 1200 draws, a binomial sd is at most ~17 counts
    assert np.all(np.abs(counts - expected) < 60), (counts, expected)
    assert abs(expected[2] / counts.sum() - 0.10) < 0.01  # the rare mode has ~10 % of the mass


def test_default_collate_batches_items():
    ds = build("synthetic", size=32, sizes=(6, 1, 1))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["modes"].shape == (4, 4, 32, 32)
    assert batch["mode_probs"].shape == (4, 4) and len(batch["id"]) == 4


def test_cli_strings_are_coerced_and_bad_options_refused():
    ds = build("synthetic", size="32", sizes="4,1,1", seed="2")
    assert (ds.image_size, len(ds), ds.seed) == (32, 4, 2)
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        build("synthetic", split="trian")
    with pytest.raises(ConfigError, match="at least 16"):
        build("synthetic", size=8)
    with pytest.raises(ConfigError, match="no images"):
        build("synthetic", split="val", sizes=(4, 0, 1))
    with pytest.raises(ConfigError, match="takes no root"):
        build("synthetic", root="/tmp")
    with pytest.raises(ConfigError, match="no option 'sise'"):
        build("synthetic", sise=32)
