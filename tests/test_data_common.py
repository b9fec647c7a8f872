"""Shared data pieces: splits, mask/image checks, joint augmentation, figures and `ambiseg show`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ambiseg.cli import main
from ambiseg.data import assign_groups, build, figure_for_item, item_figure, joint_augment, save_figure, split_indices
from ambiseg.data.splits import subset
from ambiseg.data.validate import binary_mask, unit_image
from ambiseg.errors import ConfigError, DataError
from ambiseg.registry import datasets

# ---- splits ---------------------------------------------------------------------------------


def test_group_assignment_is_seeded_and_sized():
    groups = [f"p{i}" for i in range(10)]
    first = assign_groups(groups, seed=0)
    assert sorted(first.values()).count("train") == 6 and list(first.values()).count("val") == 2
    assert assign_groups(list(reversed(groups * 3)), seed=0) == first  # depends on the set of groups only
    assert any(assign_groups(groups, seed=s) != first for s in range(1, 5))
    assert list(assign_groups(groups, seed=0, fractions=(0.3, 0.3, 0.4)).values()).count("test") == 4


def test_split_indices_keep_patients_together():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e"]
    parts = {s: split_indices(groups, s, seed=1, fractions=(0.4, 0.4, 0.2)) for s in ("train", "val", "test")}
    assert sorted(sum(parts.values(), [])) == list(range(8)) == split_indices(groups, "all", seed=1)
    for name, indices in parts.items():
        others = {groups[i] for other, idx in parts.items() if other != name for i in idx}
        assert not {groups[i] for i in indices} & others
    with pytest.raises(ConfigError, match="summing to 1"):
        split_indices(groups, "train", seed=0, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="split 'val' is empty"):
        split_indices(["a", "b"], "val", seed=0, fractions=(1.0, 0.0, 0.0))
    assert subset(list(range(10, 20)), 3, seed=0) == subset(list(range(10, 20)), 3, seed=0)
    assert len(set(subset(list(range(10, 20)), 3, seed=0))) == 3


# ---- checks ---------------------------------------------------------------------------------


def test_binary_mask_accepts_0_1_and_0_255_only():
    assert binary_mask(np.array([[0, 255], [255, 0]], np.uint8), where="m").tolist() == [[0, 1], [1, 0]]
    assert binary_mask(np.array([[0.0, 1.0]]), where="m").tolist() == [[0, 1]]
    assert binary_mask(np.array([[True, False]]), where="m").dtype == np.uint8
    assert binary_mask(np.full((2, 2), 255), where="m").tolist() == [[1, 1], [1, 1]]
    with pytest.raises(DataError, match=r"x.png: mask is not binary \(values 0, 1, 255\)"):
        binary_mask(np.array([0, 1, 255]), where="x.png")
    with pytest.raises(DataError, match="NaN"):
        binary_mask(np.array([0.0, np.nan]), where="m")


def test_unit_image_scales_and_refuses_bad_values():
    assert unit_image(np.array([0, 51, 255], np.uint8), where="i").tolist() == pytest.approx([0, 0.2, 1])
    assert unit_image(np.array([65535], np.uint16), where="i").tolist() == [1.0]
    with pytest.raises(DataError, match="inf"):
        unit_image(np.array([0.5, np.inf]), where="i")
    with pytest.raises(DataError, match=r"values in \[-2, 0.5\]"):
        unit_image(np.array([-2.0, 0.5]), where="i")


# ---- augmentation ---------------------------------------------------------------------------


def test_flips_move_image_and_masks_together_exactly():
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, 1:3, 0:5] = 1
    masks[1, 5, 6] = 1
    image = torch.stack([masks[0].float(), masks[1].float() * 0.9, torch.rand(8, 8)])
    seen = set()
    for seed in range(16):
        out_image, out_masks = joint_augment(image, masks, max_degrees=0, generator=torch.Generator().manual_seed(seed))
        assert out_masks.dtype == torch.uint8
        assert torch.equal(out_masks[0], (out_image[0] > 0.5).to(torch.uint8))
        assert torch.equal(out_masks[1], (out_image[1] > 0.5).to(torch.uint8))
        seen.add(tuple(out_masks[1].nonzero()[0].tolist()))
    assert seen == {(5, 6), (5, 1), (2, 6), (2, 1)}  # all four flip combinations occur


def test_rotation_keeps_masks_binary_and_aligned():
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    masks = torch.stack([((yy - 12) ** 2 + (xx - 18) ** 2 < 36), (yy < 16) & (xx < 10)]).to(torch.uint8)
    image = masks.float()
    for seed in range(6):
        generator = torch.Generator().manual_seed(seed)
        out_image, out_masks = joint_augment(image, masks, max_degrees=15, generator=generator)
        assert set(out_masks.unique().tolist()) <= {0, 1}
        agree = ((out_image > 0.5).to(torch.uint8) == out_masks).float().mean()
        assert agree > 0.97


# ---- figures and the CLI --------------------------------------------------------------------


def test_item_figure_shows_annotations_modes_and_samples(tmp_path: Path):
    item = build("synthetic", size=32, sizes=(2, 1, 1))[0]
    fig = item_figure(
        item["image"],
        item["masks"],
        modes=item["modes"],
        mode_probs=item["mode_probs"],
        mode_names=("a", "b", "c", "d"),
        samples=torch.rand(7, 32, 32),
        columns=5,
    )
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "image" and sum(t.startswith("annotator") for t in titles) == 4
    assert f"c p={float(item['mode_probs'][2]):.2f}" in titles and sum(t.startswith("sample") for t in titles) == 7
    assert len(fig.axes) == 5 * 4 + 1  # rows: 5 panels, 4 modes, 7 samples wrapped over 2; the colour bar
    out = save_figure(fig, tmp_path / "sub" / "fig.png")
    with Image.open(out) as img:
        img.verify()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["fig.png"]  # no temp file left
    with pytest.raises(ConfigError, match="cannot write a figure as '.xyz'"):
        save_figure(fig, tmp_path / "fig.xyz")
    named = figure_for_item(item, samples=torch.rand(2, 32, 32))
    assert {"tight p=", "satellite p=", "empty p="} <= {ax.get_title()[:-4] for ax in named.axes}
    rgb = item_figure(torch.rand(3, 16, 16), torch.zeros(2, 16, 16))
    assert [ax.get_title() for ax in rgb.axes] == ["image", "annotator 1 (empty)", "annotator 2 (empty)"]


def test_samples_lie_over_the_image_with_a_colour_bar():
    """A sample panel draws the image in grey under the sample's probability (transparent at 0),
    and one colour bar reads the probabilities of every sample panel."""
    item = build("synthetic", size=16, sizes=(1, 1, 1))[0]
    samples = torch.rand(3, 16, 16)
    fig = figure_for_item(item, samples=samples)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "probability" in bars[0].get_ylabel()
    panels = [ax for ax in fig.axes if ax.get_title().startswith("sample")]
    assert len(panels) == 3
    for ax, sample in zip(panels, samples, strict=True):
        image, probability = ax.images
        assert image.get_cmap().name == "gray" and np.array_equal(image.get_array(), item["image"][0].numpy())
        assert np.array_equal(probability.get_array(), sample.numpy()) and probability.get_clim() == (0.0, 1.0)
        assert probability.get_cmap()(0.0)[3] == 0.0 and probability.get_cmap()(1.0)[3] > 0.8  # image shows through


@pytest.mark.parametrize("samples", [None, 8], ids=["show", "with samples"])
def test_titles_never_overlap_a_panel_or_another_title(samples):
    """`ambiseg show`'s synthetic figure (annotators, then the modes) and one with samples: drawn,
    no title's box meets a panel's or another title's."""
    item = build("synthetic", size=32, sizes=(1, 1, 1))[0]
    fig = figure_for_item(item, samples=None if samples is None else torch.rand(samples, 32, 32), title="synthetic #0")
    fig.canvas.draw()  # the layout and the images' aspect are settled when drawn
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.images]
    titles = [ax.title for ax in panels if ax.get_title()] + list(fig.texts)  # the suptitle is a figure text
    assert len(titles) == (9 if samples is None else 17) + 1
    boxes = [t.get_window_extent(renderer) for t in titles]
    for i, box in enumerate(boxes):
        clash = [ax.get_title() for ax in panels if box.overlaps(ax.get_window_extent(renderer))]
        assert not clash, (titles[i].get_text(), clash)
        assert not [titles[j].get_text() for j in range(i) if box.overlaps(boxes[j])], titles[i].get_text()


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_show_writes_a_png(tmp_path: Path, capsys):
    out = tmp_path / "fig.png"
    code, stdout, _ = _run(
        ["show", "--data", "synthetic", "--split", "val", "--index", "2", "--out", str(out), "--set", "size=32"], capsys
    )
    assert code == 0 and "fig.png" in stdout
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100


def test_show_reports_bad_input_in_one_line(tmp_path: Path, capsys):
    out = str(tmp_path / "fig.png")
    for argv, text in [
        (
            ["show", "--index", "999", "--out", out],
            "--index 999 is out of range: the train split has 200 items (0..199)",
        ),
        (["show", "--data", "synthetc", "--index", "0", "--out", out], "did you mean 'synthetic'"),
        (["show", "--data", "lidc", "--root", str(tmp_path / "none"), "--index", "0", "--out", out], "does not exist"),
        (["show", "--index", "0", "--out", out, "--set", "sizes"], "--set expects key=value"),
    ]:
        code, _, err = _run(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and text in err, err
    assert not Path(out).exists()


def test_every_dataset_is_registered_with_its_options():
    assert {"synthetic", "lidc", "isic3"} <= set(datasets.names())
    fields = {
        name: {f.name for f in dataclasses.fields(datasets.get(name).config)} for name in ("synthetic", "lidc", "isic3")
    }
    assert {"split", "seed", "size", "num_annotators", "sizes", "limit"} == fields["synthetic"]
    assert {"root", "split", "seed", "fractions", "num_annotators", "limit"} <= fields["lidc"]
    assert {"root", "split", "seed", "fractions", "size", "augment", "limit"} <= fields["isic3"]
