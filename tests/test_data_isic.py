"""ISIC3 folder layout: mask name pattern, exactly-3 filter, resizing, augmentation, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ambiseg.data import build
from ambiseg.errors import DataError


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def make_isic(
    root: Path, masks_per_image: dict[str, list[str]], *, shape: tuple[int, int] = (16, 16), rows: int = 1
) -> Path:
    """Images/<id>.png (colour encodes the image number) and Segmentations/<mask names>;
    mask j of an image covers the first rows * (j + 1) rows."""
    for n, (ident, names) in enumerate(masks_per_image.items()):
        image = np.zeros((*shape, 3), dtype=np.uint8)
        image[..., 0], image[..., 1], image[..., 2] = 10 * n, 100, 200
        _save(root / "Images" / f"{ident}.png", image)
        for j, name in enumerate(names):
            mask = np.zeros(shape, dtype=np.uint8)
            mask[: rows * (j + 1)] = 255
            _save(root / "Segmentations" / name, mask)
    return root


def three(ident: str) -> list[str]:
    return [f"{ident}_f.png", f"{ident}_segmentation_m.png", f"{ident}_x_y_p.png"]


def test_layout_pattern_and_the_exactly_three_filter(tmp_path: Path):
    layout = {f"ISIC_{i:07d}": three(f"ISIC_{i:07d}") for i in range(5)}
    layout["ISIC_0000009"] = ["ISIC_0000009_a.png", "ISIC_0000009_b.png"]  # two masks: skipped
    layout["ISIC_0000001_crop"] = three("ISIC_0000001_crop")  # longest matching id wins
    make_isic(tmp_path, layout)
    (tmp_path / "Segmentations" / "stray_q.png").write_bytes(b"")  # belongs to no image
    ds = build("isic3", root=tmp_path, split="all", size=16)
    assert len(ds) == 6 and ds.skipped == {"ISIC_0000009": 2} and ds.unmatched == ["stray_q.png"]
    assert (ds.in_channels, ds.image_size, ds.num_annotators) == (3, 16, 3)
    assert ds.letters == ["fmp"] * 6
    index = ds.ids.index("ISIC_0000001_crop")
    item = ds[index]
    assert item["group"] == "ISIC_0000001_crop"
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert torch.allclose(item["image"][:, 3, 3], torch.tensor([60, 100, 200]) / 255)  # 7th image written
    assert item["masks"].dtype == torch.uint8 and item["masks"].sum(dim=(1, 2)).tolist() == [16, 32, 48]
    assert ds[ds.ids.index("ISIC_0000001")]["masks"].shape == (3, 16, 16)


def test_resizing_keeps_masks_binary_and_aligned(tmp_path: Path):
    make_isic(tmp_path, {f"ISIC_{i}": three(f"ISIC_{i}") for i in range(3)}, shape=(20, 30), rows=4)
    item = build("isic3", root=tmp_path, split="all", size=10)[0]
    assert item["image"].shape == (3, 10, 10) and item["masks"].shape == (3, 10, 10)
    assert set(item["masks"].unique().tolist()) == {0, 1}
    # mask j covered the top 4 (j + 1) of 20 rows: the top 2 (j + 1) of 10 after resizing, all columns
    for j in range(3):
        assert item["masks"][j].sum(dim=1).tolist() == [10] * (2 * (j + 1)) + [0] * (10 - 2 * (j + 1))
    assert torch.allclose(item["image"][:, 5, 5], torch.tensor([0, 100, 200]) / 255)


def test_augmentation_only_on_train_and_joint(tmp_path: Path):
    make_isic(tmp_path, {f"ISIC_{i}": three(f"ISIC_{i}") for i in range(10)})
    val = build("isic3", root=tmp_path, split="val", size=16)
    assert not val.augment and torch.equal(val[0]["masks"], val[0]["masks"])
    train = build("isic3", root=tmp_path, split="train", size=16)
    off = build("isic3", root=tmp_path, split="train", size=16, augment=False)
    assert train.augment and not off.augment
    torch.manual_seed(0)
    reads = [train[0] for _ in range(12)]
    plain = off[0]
    assert any(not torch.equal(r["masks"], plain["masks"]) for r in reads)
    for r in reads:
        assert set(r["masks"].unique().tolist()) <= {0, 1}
        # mask sizes change only by rotation corners/nearest rounding, never swap between annotators
        sizes = r["masks"].sum(dim=(1, 2))
        assert sizes[0] < sizes[1] < sizes[2]


def test_splits_by_image_are_disjoint(tmp_path: Path):
    make_isic(tmp_path, {f"ISIC_{i}": three(f"ISIC_{i}") for i in range(10)})
    ids = [set(build("isic3", root=tmp_path, split=s, augment=False).ids) for s in ("train", "val", "test")]
    assert [len(i) for i in ids] == [6, 2, 2] and len(set.union(*ids)) == 10


def test_errors(tmp_path: Path):
    with pytest.raises(DataError, match="Segmentations' is missing"):
        (tmp_path / "a" / "Images").mkdir(parents=True)
        build("isic3", root=tmp_path / "a")
    (tmp_path / "a" / "Segmentations").mkdir()
    with pytest.raises(DataError, match="Images holds no .jpg/.jpeg/.png images"):
        build("isic3", root=tmp_path / "a")
    make_isic(tmp_path / "b", {"ISIC_1": ["ISIC_1_f.png"], "ISIC_2": []})
    with pytest.raises(DataError, match=r"no image has exactly 3 masks \(mask counts found: \[0, 1\]\)"):
        build("isic3", root=tmp_path / "b")
    with pytest.raises(DataError, match="is not a folder"):
        build("isic3", root=tmp_path / "missing")

    root = make_isic(tmp_path / "c", {f"ISIC_{i}": three(f"ISIC_{i}") for i in range(3)})
    _save(root / "Segmentations" / "ISIC_1_segmentation_m.png", np.zeros((16, 12)))
    _save(root / "Segmentations" / "ISIC_2_f.png", np.full((16, 16), 7))
    ds = build("isic3", root=root, split="all", size=16)
    with pytest.raises(DataError, match=r"ISIC_1_segmentation_m.png: mask has shape \(16, 12\) but \(16, 16\)"):
        ds[1]
    with pytest.raises(DataError, match=r"ISIC_2_f.png: mask is not binary \(values 7\)"):
        ds[2]
    (root / "Images" / "ISIC_0.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="ISIC_0.png: cannot decode image"):
        ds[0]
