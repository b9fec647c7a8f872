"""Bench harness and leaderboard: records, merging, outputs, loading a finished run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ambiseg.bench import BenchSpec, run_bench
from ambiseg.errors import AmbisegError
from ambiseg.leaderboard import build_rows, write_leaderboard
from ambiseg.results import RECORD_KIND, bootstrap_ci, read_records


def spec(out, **kw):
    base = dict(methods=["det-unet"], preset="smoke", counts=(4, 8), out=out, baseline=False, progress=False)
    return BenchSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    records = run_bench(spec(out))
    return out, records


def test_record_has_everything_a_paper_needs(bench_dir):
    out, records = bench_dir
    (rec,) = records
    assert rec["kind"] == RECORD_KIND and rec["method"] == "det-unet" and rec["dataset"] == "synthetic"
    for key in ("GED4", "GED8", "Diversity8", "HM-IoU4", "HM-IoU8", "Dice", "TrueGED8", "ModeTV8"):
        m = rec["metrics"][key]
        assert m["lo"] <= m["mean"] <= m["hi"] and m["n"] == 4
    assert rec["metrics"]["Diversity8"]["mean"] == 0.0  # a deterministic model never varies
    for key in ("Stray", "MissedConsensus", "SoftShare"):  # plausibility over all S; NaN (null) where undefined
        assert len(rec["per_image"][key]) == 4 and rec["metrics"][key]["n"] <= 4
    assert rec["timing"]["samples_per_image"] == 8 and rec["timing"]["sample_s_per_image"] > 0
    assert rec["timing"]["train_s"] > 0 and rec["params"] > 0
    timing = rec["timing"]  # the wall time of the whole (method, seed), for the track's total CPU time
    assert 0 < timing["untrained_eval_s"] and 0 < timing["eval_s"]
    assert timing["total_s"] >= timing["untrained_eval_s"] + timing["train_s"] + timing["eval_s"]
    assert rec["flops"]["per_image"] > 0 and rec["flops"]["per_sample"] == 0
    assert rec["env"]["versions"]["torch"] and rec["env"]["commit"]
    assert rec["config"]["method"] == "det-unet" and "GED" in rec["untrained"]
    (untrained,) = rec["untrained_per_image"].values()  # per image, for a paired trained-vs-untrained interval
    assert len(untrained) == 4 and sum(untrained) / 4 == pytest.approx(rec["untrained"]["GED"])
    files = list((out / "results").glob("det-unet-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["seed"] == 0
    refs = json.loads((out / "results" / "reference-synthetic-smoke.json").read_text())["records"]
    assert [r["method"] for r in refs] == ["ref:majority", "ref:union", "ref:empty", "ref:raters", "ref:truth"]
    assert all(len(r["per_image"]["GED8"]) == 4 and r["reference"] for r in refs)
    assert refs[2]["metrics"]["Diversity8"]["mean"] == 0.0  # one fixed mask per image
    for ref in refs[:4]:  # masks inside the raters' union, 0/1: no stray component, no soft pixel
        # (ref:truth draws true modes, which may be ones no rater of the image drew: stray there)
        assert ref["metrics"]["Stray"]["mean"] == 0.0 and ref["metrics"]["SoftShare"]["mean"] in (0.0, None)
    assert {v for v in refs[2]["per_image"]["MissedConsensus"]} <= {1.0, None}  # ref:empty misses every consensus
    assert {v for v in refs[1]["per_image"]["MissedConsensus"]} <= {0.0, None}  # ref:union never does
    for ext in ("md", "csv", "tex", "png"):
        assert (out / f"leaderboard.{ext}").stat().st_size > 0
    assert "| det-unet |" in (out / "leaderboard.md").read_text()


def test_a_finished_evaluation_is_kept_and_a_finished_run_is_loaded(bench_dir, tmp_path):
    import shutil

    out = shutil.copytree(bench_dir[0], tmp_path / "copy")  # the module's fixture stays as it was
    records = bench_dir[1]
    again = run_bench(spec(out))[0]  # resumable: the same evaluation is not done twice
    assert again["created"] == records[0]["created"] and len(list((out / "results").glob("det-unet-*"))) == 1
    other = run_bench(spec(out, counts=(4,)))[0]  # another evaluation of the same trained run
    assert other["timing"]["train_s"] == records[0]["timing"]["train_s"]  # read from the checkpoint
    assert other["per_image"]["GED4"] == records[0]["per_image"]["GED4"]  # same seed, same numbers
    rows = [r for r in build_rows(read_records([out])) if not r.reference]
    assert len(rows) == 1 and rows[0].seeds == [0]  # newest record per seed counts, the old file stays
    assert len(list((out / "results").glob("det-unet-*.json"))) == 2


def test_a_run_of_another_configuration_is_refused_before_any_evaluation(bench_dir, monkeypatch):
    out, _ = bench_dir
    import ambiseg.bench as bench

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before refusing the run directory")

    monkeypatch.setattr(bench, "evaluate_method", no_evaluation)
    with pytest.raises(AmbisegError, match="another configuration; pass --retrain"):
        run_bench(spec(out, overrides={"transport.widths": [8, 8]}))


def test_leaderboard_merges_directories_without_dropping(bench_dir, tmp_path):
    out, _ = bench_dir
    other = tmp_path / "other"
    run_bench(spec(other, seeds=(1,)))
    merged = tmp_path / "merged"
    rows, paths = write_leaderboard([out, other], merged)
    assert rows[0].method == "det-unet" and sorted(r.method for r in rows[1:] if r.reference) == [
        "ref:empty",
        "ref:majority",
        "ref:raters",
        "ref:truth",
        "ref:union",
    ]
    assert rows[0].seeds == [0, 1] and all(r.seeds == [0] for r in rows[1:])  # one test set, one reference
    assert rows[0].metrics["GED8"]["n"] == 8  # per-image values of both seeds
    both = np.stack([rows[0].per_seed[seed]["GED8"] for seed in (0, 1)])
    ged = rows[0].metrics["GED8"]
    assert (ged["lo"], ged["hi"]) == bootstrap_ci(both)  # images and seeds resampled, not 8 pooled images
    with open(paths["csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert table[0]["method"] == "det-unet" and table[0]["seeds"] == "0 1" and table[1]["reference"] == "1"
    # a measured zero stays a number (det-unet adds no work per sample), an unmeasured cell is empty
    assert float(table[0]["flops_per_sample"]) == 0 and float(table[0]["flops_per_image"]) > 0
    assert table[1]["flops_per_image"] == "" and float(table[0]["peak_mb"]) > 0
    tex = paths["tex"].read_text()
    assert "\\begin{tabular}" in tex and "% protocol" not in tex and "seeds 0,1" in tex
    lines = tex.splitlines()
    first_ref = next(i for i, line in enumerate(lines) if line.startswith("ref:"))
    assert lines[first_ref - 1] == "\\midrule" and lines[first_ref].endswith("& - \\\\")  # below a rule, untimed
    assert "GED8 95\\% CI" in tex and "\\Delta" not in tex  # no atfm row here: no paired column


def test_leaderboard_uses_the_records_it_is_given(bench_dir, tmp_path):
    out, _ = bench_dir
    records = read_records([out])
    models = [r for r in records if not r.get("reference")]
    rows, _ = write_leaderboard([out], tmp_path / "given", records=models)  # the references left out
    assert [r.method for r in rows] == ["det-unet"]
    rows, _ = write_leaderboard([out], tmp_path / "read")  # read from `inputs`: references back in
    assert "ref:majority" in {r.method for r in rows}


def test_a_file_that_is_not_a_record_is_refused(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(AmbisegError, match="is not a results file"):
        read_records([bad])
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(AmbisegError, match="not JSON"):
        read_records([tmp_path / "x.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AmbisegError, match="no bench records found"):
        read_records([tmp_path / "empty"])
    with pytest.raises(AmbisegError, match="does not exist"):
        read_records([tmp_path / "missing"])


def test_bootstrap_interval_brackets_the_mean():
    values = np.arange(20, dtype=float)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 10
    assert bootstrap_ci(np.array([2.0])) == (2.0, 2.0)


def test_seeds_on_the_same_images_are_not_counted_as_more_images():
    values = np.random.default_rng(1).normal(size=500)
    one = bootstrap_ci(values)
    assert bootstrap_ci(values[None]) == one  # [1, images] is the one-seed case
    # three seeds that agree image by image carry no more information than one: the same interval
    # (pooling them as 1,500 images would narrow it by sqrt(3))
    assert bootstrap_ci(np.stack([values] * 3)) == pytest.approx(one)
    pooled = bootstrap_ci(np.concatenate([values] * 3))
    assert pooled[1] - pooled[0] < 0.7 * (one[1] - one[0])
    # seeds that disagree (a training-seed offset) widen it: the seed is resampled too
    shifted = bootstrap_ci(np.stack([values - 0.3, values, values + 0.3]))
    assert shifted[1] - shifted[0] > 1.5 * (one[1] - one[0])
    # a non-finite value drops its image for every seed
    holed = np.stack([values] * 3)
    holed[1, 7] = np.nan
    assert bootstrap_ci(holed) == bootstrap_ci(np.stack([np.delete(values, 7)] * 3))
    with pytest.raises(ValueError, match="seeds, images"):
        bootstrap_ci(np.zeros((2, 2, 2)))


def test_same_seed_gives_the_same_numbers_when_trained_again(bench_dir, tmp_path, capsys):
    out, records = bench_dir
    again = run_bench(spec(tmp_path / "again"))[0]
    np.testing.assert_equal(again["per_image"], records[0]["per_image"])  # NaN where undefined, in both
    assert again["untrained"]["GED"] == records[0]["untrained"]["GED"]
    assert "device cpu, threads 1)" in capsys.readouterr().err  # the run header: the session's one thread
    assert again["env"]["threads"] == records[0]["env"]["threads"] == 1  # and the record's


def test_a_finished_run_with_tuple_options_is_recognised(tmp_path):
    """Presets written with tuples must compare equal to the JSON config read back."""
    out = tmp_path / "b"
    first = run_bench(spec(out, methods=["act-gtr"], counts=(2,)))[0]
    second = run_bench(spec(out, methods=["act-gtr"], counts=(2,)))[0]
    assert second["timing"]["train_s"] == first["timing"]["train_s"]


def test_records_and_checkpoints_of_a_former_method_name_join_todays(bench_dir):
    """The recipe `sfm` is `sfm-noise` since 0.2: old records share its row, old runs load as it."""
    from pathlib import Path

    from ambiseg.checkpoint import load_checkpoint
    from ambiseg.method import Method

    _, records = bench_dir
    renamed = [{**records[0], "method": "ssn", "seed": 1}, {**records[0], "method": "act-gtr", "seed": 2}]
    (row,) = build_rows(renamed)
    assert row.method == "act-gtr" and row.seeds == [1, 2]
    old_run = Path(__file__).parents[1] / "benchmarks/results/lidc-cpu-v3/runs/sfm-lidc-cpu-seed0/last.safetensors"
    ckpt = load_checkpoint(old_run, method="sfm-noise")
    assert ckpt.config["method"] == "sfm" and Method.from_config(ckpt.config).name == "sfm-noise"
    with pytest.raises(AmbisegError, match="is of method 'sfm', not 'atfm'"):
        load_checkpoint(old_run, method="atfm")


def test_a_method_has_one_colour_in_every_panel():
    """leaderboard.png: each method keeps its colour and marker across panels, whatever the rows'
    order or which methods a panel has."""
    from matplotlib.colors import to_hex

    from ambiseg.leaderboard import figure

    def record(method: str, preset: str, ged: float) -> dict:
        return {
            "kind": RECORD_KIND,
            "dataset": "synthetic",
            "preset": preset,
            "method": method,
            "seed": 0,
            "created": "2025-01-01T00:00:00+00:00",
            "per_image": {"GED4": [ged, ged + 0.1, ged - 0.1]},
            "timing": {"train_s": 1.0, "sample_s_per_image": 0.1 + ged, "samples_per_image": 4},
            "params": 10,
            "env": {"device": "cpu", "device_name": "CPU"},
        }

    smoke = [record(m, "smoke", g) for m, g in [("atfm", 0.3), ("phiseg", 0.4), ("probunet", 0.5)]]
    cpu = [record(m, "cpu", g) for m, g in [("probunet", 0.2), ("det-unet", 0.3), ("atfm", 0.6)]]
    fig = figure(build_rows(smoke + cpu))
    panels = []
    for ax in fig.axes:
        points = {bar.get_label(): bar.lines[0] for bar in ax.containers}
        panels.append({name: (to_hex(line.get_color()), line.get_marker()) for name, line in points.items()})
    by_methods = {tuple(sorted(p)): p for p in panels}
    one, two = by_methods[("atfm", "phiseg", "probunet")], by_methods[("atfm", "det-unet", "probunet")]
    assert one["atfm"] == two["atfm"] and one["probunet"] == two["probunet"]
    styles = {**one, **two}
    assert len(set(styles.values())) == 4  # and no two methods share one


def test_a_smoke_table_says_its_numbers_mean_nothing(bench_dir):
    from ambiseg.leaderboard import PRESET_CAVEATS, to_markdown, to_rich

    _, records = bench_dir
    as_cpu = [{**r, "preset": "cpu"} for r in records]
    assert PRESET_CAVEATS["smoke"] in to_markdown(build_rows(records))
    assert "preset smoke: a few training steps" in str(to_rich(build_rows(records))[0].caption)
    assert "say nothing" not in to_markdown(build_rows(as_cpu))
    assert to_rich(build_rows(as_cpu))[0].caption is None


def test_make_record_writes_the_schema_and_refuses_what_read_records_would_refuse():
    from ambiseg.errors import AmbisegError
    from ambiseg.results import check_record, make_record

    fields = dict(method="m", dataset="synthetic", preset="cpu", seed=0, counts=[2], params=3, env={"device": "cpu"})
    timing = {"train_s": 1.0, "sample_s_per_image": 0.5, "samples_per_image": 2}
    rec = make_record(per_image={"GED2": [0.2, 0.4], "Stray": [float("nan"), 1.0]}, timing=timing, **fields)
    assert rec["kind"] == RECORD_KIND and rec["metrics"]["GED2"]["mean"] == pytest.approx(0.3)
    assert rec["metrics"]["Stray"]["n"] == 1 and "reference" not in rec
    check_record(json.loads(json.dumps(rec).replace("NaN", "null")), "roundtrip")
    assert make_record(per_image={"GED2": [0.1]}, timing=timing, reference=True, **fields)["reference"] is True
    with pytest.raises(AmbisegError, match=r"the m record being written.*timing.train_s"):
        make_record(per_image={"GED2": [0.1]}, timing={**timing, "train_s": -1.0}, **fields)
    with pytest.raises(AmbisegError, match=r"per_image.GED2.*holds 1 values, not 2"):
        make_record(per_image={"Stray": [0.1, 0.2], "GED2": [0.1]}, timing=timing, **fields)


def test_the_printed_table_holds_this_runs_records_and_names_what_earlier_runs_left(bench_dir, tmp_path):
    """Records an earlier run left in --out (another method here) go into the files, not into the
    table this run prints; the last line says how many there are."""
    import io
    import shutil

    from rich.console import Console

    out = tmp_path / "bench"
    shutil.copytree(bench_dir[0], out)
    buffer = io.StringIO()
    run_bench(spec(out, methods=["act-gtr"]), console=Console(file=buffer, width=400))
    printed = buffer.getvalue()
    assert "act-gtr" in printed and "ref:majority" in printed and "det-unet" not in printed.split("act-gtr on")[-1]
    assert "the table above holds this run's 6, the files also 1 that earlier runs left there" in printed
    assert "| det-unet" in (out / "leaderboard.md").read_text()


def test_set_applies_to_the_methods_not_to_the_implicit_baseline(tmp_path):
    """`--set prior.rank=3` names an option of the GTR; the det-unet row (no GTR) used to be built with
    it too and refused the whole bench."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    records = run_bench(
        spec(tmp_path / "b", methods=["act-gtr"], baseline=True, overrides={"prior.rank": 3}),
        console=Console(file=buffer, width=300),
    )
    by_name = {r["method"]: r for r in records}
    assert (
        by_name["act-gtr"]["config"]["prior"]["rank"] == 3 and by_name["det-unet"]["config"]["prior"]["name"] == "delta"
    )
    assert "det-unet (the baseline row) is built without --set" in buffer.getvalue()
