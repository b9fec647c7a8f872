"""Plausibility metrics (stray_rate, missed_consensus, soft_share): values worked out by hand on
6x6 masks, batch equivalence, dtypes and devices, and NaN through records and the leaderboard."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ambiseg import leaderboard
from ambiseg.errors import DataError
from ambiseg.files import write_json
from ambiseg.leaderboard import build_rows, to_csv, to_latex, to_markdown, to_rich
from ambiseg.metrics import evaluate, missed_consensus, soft_share, stray_rate
from ambiseg.results import RECORD_KIND, bootstrap_ci, read_records, summarise

NAN = float("nan")


def grid(*pixels: tuple[int, int], size: int = 6) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def same(x: torch.Tensor, values: list[float]) -> bool:
    """`x` equals `values` (NaN where NaN) up to float32 rounding."""
    return torch.allclose(x, torch.tensor(values), atol=1e-6, equal_nan=True)


# raters of image 0: R1 the 2x2 block at rows 1-2, cols 1-2; R2 the 2x2 block at rows 2-3, cols 2-3
R1 = grid((1, 1), (1, 2), (2, 1), (2, 2))
R2 = grid((2, 2), (2, 3), (3, 2), (3, 3))
EMPTY = grid()


def test_stray_rate_by_hand():
    # image 0, union U = R1 | R2 (7 pixels):
    # s0 = (4,4) alone: one component outside U -> stray
    # s1 = (3,3), (4,4), (5,5): a diagonal chain, one 8-connected component that touches U by one
    #      pixel, (3,3) -> not stray (with 4-connectivity (4,4) and (5,5) would be stray components)
    # s2 = R1 plus (5,0): R1 lies in U, (5,0) is a component of its own outside U -> stray
    image0 = torch.stack([grid((4, 4)), grid((3, 3), (4, 4), (5, 5)), R1 | grid((5, 0))])
    # image 1, no rater marks anything: every component is stray, an empty sample is not
    image1 = torch.stack([EMPTY, grid((0, 0)), EMPTY])
    samples = torch.stack([image0, image1])
    annotations = torch.stack([torch.stack([R1, R2]), torch.stack([EMPTY, EMPTY])])
    assert same(stray_rate(samples, annotations), [2 / 3, 1 / 3])
    assert same(stray_rate(samples[:, 1:2], annotations), [0.0, 1.0])  # s1 alone: the chain; (0, 0)


def test_stray_components_never_join_across_samples_or_images():
    # the samples are labelled as one [B * S, H, W] stack; were neighbouring slices connected, each
    # lone (1, 1) would join the (1, 1) of the next slice, whose component touches the raters
    raters = torch.stack([grid((0, 0)), grid((5, 5))])[:, None]  # image 0: (0,0); image 1: (5,5)
    samples = torch.stack(
        [
            torch.stack([grid((1, 1)), grid((0, 0), (1, 1))]),  # stray; touched (diagonal to (0,0))
            torch.stack([grid((1, 1)), grid((4, 4), (5, 5))]),  # stray (after image 0's last slice); touched
        ]
    )
    assert same(stray_rate(samples, raters), [0.5, 0.5])


def test_missed_consensus_by_hand():
    samples = torch.stack(
        [
            torch.stack([EMPTY, R1, EMPTY]),  # every rater marks: 2 of 3 samples empty
            torch.stack([EMPTY, EMPTY, EMPTY]),  # a rater marks nothing: undefined
            torch.stack([R2, grid((5, 5)), R1]),  # every rater marks, no sample empty
        ]
    )
    annotations = torch.stack([torch.stack([R1, R2]), torch.stack([R1, EMPTY]), torch.stack([R2, grid((0, 5))])])
    assert same(missed_consensus(samples, annotations), [2 / 3, NAN, 0.0])
    # probabilities are binarised first: 0.49 everywhere is an empty sample, one pixel at 0.5 is not
    probs = torch.full((1, 2, 6, 6), 0.49)
    probs[0, 1, 3, 3] = 0.5
    assert same(missed_consensus(probs, torch.stack([R1, R2])[None]), [0.5])


def test_soft_share_by_hand():
    # one row of 4 pixels; raters [1, 1, 0, 0] and [1, 0, 0, 0]: union U = pixels {0, 1}
    raters = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)[:, None]  # [A, 1, 4]
    probs = torch.tensor(
        [
            [0.95, 0.60, 0.30, 0.05],  # foreground {0, 1}: U_0 = {0, 1}; soft there: 0.6 (0.3 is outside U_0)
            [0.20, 0.95, 0.70, 0.50],  # foreground {1, 2, 3}: U_1 = all 4; soft: 0.2, 0.7, 0.5
        ]
    )[:, None]  # [S, 1, 4]
    # pooled over the samples (1 + 3) / (2 + 4) = 2/3, not the mean of the per-sample shares (5/8)
    assert same(soft_share(probs[None], raters[None]), [2 / 3])
    # no rater marks and no sample reaches 0.5: every U_s is empty -> NaN, whatever is soft outside
    assert same(soft_share(torch.tensor([[[[0.3, 0.2, 0.4, 0.0]]]]), torch.zeros(1, 2, 1, 4)), [NAN])
    # the range is open: 0.1 and 0.9 are not soft (float32 and float64 alike)
    for dtype in (torch.float32, torch.float64):
        edges = torch.tensor([[[[0.1, 0.9, 0.0, 1.0]]]], dtype=dtype)
        assert same(soft_share(edges, torch.ones(1, 1, 1, 4)), [0.0])
    # bool and 0/1 samples have no soft pixel: 0 where some U_s is non-empty
    assert same(soft_share(probs[None] >= 0.5, raters[None]), [0.0])
    assert same(soft_share((probs[None] >= 0.5).to(torch.uint8), raters[None]), [0.0])


def random_batch(seed: int, b: int = 5, s: int = 4, a: int = 3, size: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities `[b, s, size, size]` and bool raters, with an all-empty image and an empty rater."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(b, s, size, size, generator=g) ** 2
    raters = torch.rand(b, a, size, size, generator=g) > 0.7
    raters[1, 0] = False  # a rater marks nothing: MissedConsensus undefined
    raters[2] = False  # nobody marks: every component is stray
    probs[2, :2] = 0.2  # two samples of image 2 are empty
    probs[3] = 0.0  # image 3: every sample empty
    return probs, raters


@pytest.mark.parametrize("fn", [stray_rate, missed_consensus, soft_share])
def test_a_batch_gives_each_image_its_own_value(fn):
    probs, raters = random_batch(0)
    batch = fn(probs, raters)
    alone = torch.cat([fn(probs[i : i + 1], raters[i : i + 1]) for i in range(len(probs))])
    assert batch.shape == (5,) and torch.equal(batch.isnan(), alone.isnan())
    torch.testing.assert_close(batch, alone, equal_nan=True)
    assert batch[1:2].isnan().all() == (fn is missed_consensus)


def test_evaluate_keys_equal_the_functions():
    probs, raters = random_batch(1)
    out = evaluate(probs, raters, counts=(2, 4), at=4)
    for key, fn in (("Stray", stray_rate), ("MissedConsensus", missed_consensus), ("SoftShare", soft_share)):
        torch.testing.assert_close(out[key], fn(probs, raters), equal_nan=True)
    assert out["Stray"][2] > 0 and out["SoftShare"][0] > 0 and out["MissedConsensus"][1].isnan()


@pytest.mark.parametrize(
    "dtype", [torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]
)
def test_dtypes_give_float32_on_the_input_device(dtype):
    probs, raters = random_batch(2)
    samples = (probs >= 0.5) if dtype in (torch.bool, torch.uint8) else probs
    samples = samples.to(dtype)
    for fn in (stray_rate, missed_consensus, soft_share):
        value = fn(samples, raters.to(torch.uint8))
        assert value.dtype == torch.float32 and value.device.type == "cpu" and value.shape == (5,)
    # binarised metrics agree across dtypes; float16/bfloat16 round a few probabilities near 0.5
    if dtype in (torch.bool, torch.uint8, torch.float64):
        assert torch.equal(stray_rate(samples, raters), stray_rate(probs, raters))
    with pytest.raises(DataError, match="NaN"):
        stray_rate(torch.full((1, 2, 4, 4), NAN), torch.zeros(1, 1, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    probs, raters = random_batch(3)
    for fn in (stray_rate, missed_consensus, soft_share):
        cpu, gpu = fn(probs, raters), fn(probs.cuda(), raters.cuda())
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        torch.testing.assert_close(gpu.cpu(), cpu, equal_nan=True)


# ---- NaN through records, summaries and the leaderboard -----------------------------------------------------


def record(method: str, per_image: dict[str, list[float]], *, seed: int = 0) -> dict:
    """A minimal bench record (the fields `check_record` requires)."""
    return {
        "kind": RECORD_KIND,
        "schema": 1,
        "dataset": "synthetic",
        "preset": "smoke",
        "method": method,
        "seed": seed,
        "created": "2025-01-01T00:00:00+00:00",
        "per_image": per_image,
        "timing": {"train_s": 1.0, "sample_s_per_image": 0.1, "samples_per_image": 4},
        "params": 10,
        "env": {"device": "cpu", "device_name": "CPU"},
    }


GED = [0.5, 0.4, 0.3, 0.2]
PLAUSIBLE = {"Stray": [0.0, 0.25, 0.5, 0.0], "MissedConsensus": [NAN, 0.5, 0.0, 1.0], "SoftShare": [0.1, NAN, 0.3, 0.2]}


def test_nan_is_written_as_null_and_read_back_as_nan(tmp_path):
    folder = tmp_path / "results"
    rec = record("det-unet", {"GED4": GED, **PLAUSIBLE})
    rec["metrics"] = summarise(rec["per_image"])
    write_json(folder / "new.json", rec)
    text = (folder / "new.json").read_text()
    assert "NaN" not in text and json.loads(text)["per_image"]["MissedConsensus"][0] is None  # strict JSON
    (back,) = read_records([folder])
    assert math.isnan(back["per_image"]["MissedConsensus"][0]) and back["per_image"]["Stray"] == PLAUSIBLE["Stray"]
    assert back["metrics"]["MissedConsensus"] == pytest.approx(rec["metrics"]["MissedConsensus"])
    summary = summarise(back["per_image"])["MissedConsensus"]  # the undefined image is left out
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(0.5)
    assert (summary["lo"], summary["hi"]) == bootstrap_ci([0.5, 0.0, 1.0])
    undefined = summarise({"x": [NAN, NAN]})["x"]
    assert undefined["n"] == 0 and all(math.isnan(undefined[k]) for k in ("mean", "lo", "hi"))


def test_old_records_without_the_keys_show_empty_cells():
    old = record("det-unet", {"GED4": GED})  # written before the plausibility metrics existed
    new = record("act-gtr", {"GED4": GED, **PLAUSIBLE})
    rows = build_rows([old, new])
    markdown = to_markdown(rows)
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    assert header.startswith("| method | GED4 | Stray | MissedConsensus | SoftShare |")
    lines = {line.split(" | ")[0]: line.split(" | ") for line in markdown.splitlines() if line.startswith("| ")}
    assert lines["| det-unet"][2:5] == ["-", "-", "-"]
    assert lines["| act-gtr"][3].startswith("0.500 [")  # mean of the three defined images
    table = {r["method"]: r for r in csv.DictReader(io.StringIO(to_csv(rows)))}
    assert table["det-unet"]["Stray"] == "" and float(table["act-gtr"]["SoftShare"]) == pytest.approx(0.2)
    tex = to_latex(rows)
    assert "MissedConsensus" in tex and any(
        line.startswith("det-unet & 0.350 & - & - & -") for line in tex.splitlines()
    )
    (console,) = to_rich(rows)
    assert [c.header for c in console.columns][2:5] == ["Stray", "MissedConsensus", "SoftShare"]
    assert "the plausibility of single samples" in markdown  # the footer says what the columns are
    assert "plausibility" not in to_markdown(build_rows([old]))  # and is silent where none is shown


def test_paired_differences_skip_images_undefined_on_either_side():
    anchor = record("atfm", {"GED4": GED, **PLAUSIBLE})
    other = record("det-unet", {"GED4": GED, "MissedConsensus": [0.0, 0.0, NAN, 0.5]})
    rows = {r.method: r for r in build_rows([anchor, other])}
    paired = leaderboard._paired(rows["det-unet"], rows["atfm"], "MissedConsensus")
    assert paired is not None and paired["mean"] == pytest.approx(-0.5)  # images 1 and 3 only
    assert (paired["lo"], paired["hi"]) == bootstrap_ci(np.array([[-0.5, -0.5]]))
    nothing = record("det-unet", {"GED4": GED, "MissedConsensus": [0.0, NAN, NAN, NAN]})
    rows = {r.method: r for r in build_rows([anchor, {**nothing, "method": "phiseg"}])}
    assert leaderboard._paired(rows["phiseg"], rows["atfm"], "MissedConsensus") is None  # no image on both sides


def test_the_docs_plausibility_table_is_the_records_means():
    """benchmarks/protocol_table.py --plausibility: the lidc-v2 table of docs/leaderboard.md."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "protocol_table.py"
    spec = importlib.util.spec_from_file_location("protocol_table", path)
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    atfm = [record("atfm", {"GED100": GED, "HM-IoU32": [0.6, 0.6, 0.7, 0.7], **PLAUSIBLE}, seed=s) for s in (0, 1, 2)]
    det = [record("det-unet", {"GED100": [0.9, 0.8, 0.7, 0.6]}, seed=s) for s in (0, 2)]
    lines = table.plausibility_table(det + atfm).splitlines()
    assert lines[0] == (
        "| method | seeds | GED100 | HM-IoU32 | Diversity100 | Stray | MissedConsensus | SoftShare | mean train s |"
    )
    # best GED100 first; MissedConsensus and SoftShare average the images where they are defined
    assert lines[2] == "| atfm | 0-2 | 0.350 | 0.650 | - | 0.188 | 0.500 | 0.200 | 1 |"
    assert lines[3] == "| det-unet | 0,2 | 0.750 | - | - | - | - | - | 1 |"
