"""Evaluation protocols, spread test subsets, reference rows and paired differences in the leaderboard."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from test_bench import spec
from test_data_lidc import REAL_ZIP

from ambiseg.bench import BenchSpec, run_bench
from ambiseg.cli.options import parse_ints
from ambiseg.data.spec import DataSpec
from ambiseg.data.splits import subset
from ambiseg.errors import AmbisegError, ConfigError, DataError
from ambiseg.leaderboard import build_rows, to_latex, to_markdown
from ambiseg.protocols import PROTOCOLS, get_protocol, ids_digest
from ambiseg.reference import reference_samples
from ambiseg.results import bootstrap_ci, of_seeds, read_records


def test_a_spread_subset_holds_every_group_and_is_seeded():
    groups = [f"p{i % 7}" for i in range(60)]
    indices = list(range(100, 160))
    picked = subset(indices, 10, seed=3, groups=groups)
    assert len(picked) == 10 and picked == sorted(picked)
    assert {groups[i - 100] for i in picked} == set(groups)  # all 7 patients
    assert picked == subset(indices, 10, seed=3, groups=groups) != subset(indices, 10, seed=4, groups=groups)
    with pytest.raises(ConfigError, match="cannot span all 7 groups"):
        subset(indices, 5, seed=0, groups=groups)


def test_protocol_names_and_test_ids_are_checked():
    with pytest.raises(ConfigError, match="unknown protocol 'lidc-v9'.*lidc-v1"):
        get_protocol("lidc-v9")
    protocol = PROTOCOLS["lidc-v1"]
    with pytest.raises(DataError, match="is not protocol lidc-v1's"):
        protocol.check_test_ids(["LIDC-IDRI-0001/nodule-0/slice-0"] * 500, where="here")


def test_a_protocol_refuses_what_contradicts_it():
    base = dict(methods=["det-unet"], preset="smoke", out="unused", protocol="lidc-v1")
    with pytest.raises(ConfigError, match="defined on --data lidc, not synthetic"):
        BenchSpec(**base).data_spec()
    with pytest.raises(ConfigError, match="data.test.limit=20 contradicts protocol lidc-v1"):
        BenchSpec(**base, data="lidc", data_settings={"data.test.limit": 20}).data_spec()
    with pytest.raises(ConfigError, match="scores 16,32,100 samples, not 4"):
        BenchSpec(**base, data="lidc", counts=(4,)).data_spec()


@pytest.mark.skipif(not REAL_ZIP.is_file(), reason=f"real LIDC zip not found at {REAL_ZIP}")
def test_lidc_v1_is_the_same_500_slices_of_all_test_patients_for_every_preset():
    protocol = get_protocol("lidc-v1")
    for preset in ("cpu", "paper"):
        data = BenchSpec(methods=["det-unet"], data="lidc", root=str(REAL_ZIP), preset=preset, protocol="lidc-v1")
        test = data.data_spec().build("test")
        assert ids_digest(test.ids) == protocol.test_ids_sha256 and len(test) == 500
        assert len(set(test.groups)) == 142  # every test patient of the seed-0 split
    full = DataSpec(name="lidc", root=str(REAL_ZIP), preset="paper").build("test")
    assert len(set(full.groups)) == 142


def test_reference_samples_follow_the_votes():
    masks = np.zeros((4, 2, 2), dtype=np.uint8)
    masks[:3, 0, 0] = 1  # 3 of 4 raters
    masks[:2, 0, 1] = 1  # a tie
    masks[0, 1, 1] = 1  # one rater
    import torch

    out = reference_samples(torch.from_numpy(masks), 5, torch.Generator().manual_seed(0))
    assert out["ref:majority"][0, 0].tolist() == [[True, False], [False, False]]
    assert out["ref:union"][0, 0].tolist() == [[True, True], [False, True]]
    assert not out["ref:empty"].any() and out["ref:raters"].shape == (1, 5, 2, 2)
    assert all(any(torch.equal(s, torch.from_numpy(m).bool()) for m in masks) for s in out["ref:raters"][0])
    assert "ref:truth" not in out  # no known distribution


def test_ref_truth_draws_the_true_modes_by_their_probabilities():
    import torch

    modes = torch.zeros(3, 2, 2, dtype=torch.uint8)
    modes[0, 0, 0], modes[1, 1, 1] = 1, 1  # mode 2 is empty
    probs = torch.tensor([0.7, 0.3, 0.0])
    masks = modes[:2]
    out = reference_samples(masks, 4000, torch.Generator().manual_seed(0), modes=modes, probs=probs)
    truth = out["ref:truth"][0]
    first = truth[:, 0, 0].float().mean().item()
    assert truth.shape == (4000, 2, 2) and abs(first - 0.7) < 0.03  # about 70% are mode 0
    assert not (truth.flatten(1).sum(1) == 0).any()  # mode 2 has probability 0: never drawn
    # the other rows take the same generator draws as without a known distribution
    plain = reference_samples(masks, 4000, torch.Generator().manual_seed(0))
    assert torch.equal(plain["ref:raters"], out["ref:raters"])


def test_paired_difference_to_atfm_matches_the_per_image_values(tmp_path):
    out = tmp_path / "b"
    run_bench(spec(out, methods=["det-unet"]))
    (record,) = [r for r in read_records([out]) if r["method"] == "det-unet"]
    fake = []
    for seed, shift in ((0, 0.1), (1, 0.3)):  # an "atfm" with two seeds; det-unet has seed 0 only
        atfm = copy.deepcopy(record)
        atfm.update(method="atfm", seed=seed)
        atfm["per_image"]["GED8"] = [v - shift for v in record["per_image"]["GED8"]]
        fake.append(atfm)
    rows = {r.method: r for r in build_rows([record, *fake, *[r for r in read_records([out]) if r.get("reference")]])}
    assert rows["det-unet"].vs_anchor["GED8"]["mean"] == pytest.approx(0.1)  # paired on seed 0 only
    majority = rows["ref:majority"]
    expected = np.mean(
        [m - a for a_rec in fake for m, a in zip(majority.per_seed[0]["GED8"], a_rec["per_image"]["GED8"], strict=True)]
    )
    assert majority.vs_anchor["GED8"]["mean"] == pytest.approx(expected)  # against both atfm seeds
    diffs = np.stack([np.subtract(majority.per_seed[0]["GED8"], a["per_image"]["GED8"]) for a in fake])
    assert (majority.vs_anchor["GED8"]["lo"], majority.vs_anchor["GED8"]["hi"]) == bootstrap_ci(diffs)
    assert "GED8 vs atfm" in to_markdown(list(rows.values()))
    tex = to_latex(list(rows.values()))
    d = majority.vs_anchor["GED8"]
    assert "$\\Delta$GED8 vs atfm" in tex and f"${d['mean']:+.3f}$ $[{d['lo']:+.3f}, {d['hi']:+.3f}]$" in tex


def test_of_seeds_keeps_the_named_seeds_and_every_reference_row():
    records = [{"method": "a", "seed": 0}, {"method": "a", "seed": 2}, {"method": "ref:x", "seed": 0, "reference": 1}]
    assert of_seeds(records, None) == records
    assert [r["seed"] for r in of_seeds(records, parse_ints("2", "--seeds"))] == [2, 0]  # seed 2 and the reference
    assert of_seeds(records, parse_ints("1", "--seeds")) == [records[2]]
    with pytest.raises(AmbisegError, match="comma-separated integers.*'0;1'"):
        parse_ints("0;1", "--seeds")


def test_records_of_two_protocols_never_share_a_table(tmp_path):
    out = tmp_path / "b"
    (record,) = run_bench(spec(out, methods=["det-unet"]))
    other = {**copy.deepcopy(record), "protocol": {"name": "lidc-v1"}, "created": "2099-01-01T00:00:00+00:00"}
    rows = [r for r in build_rows([record, other]) if r.method == "det-unet"]
    assert sorted(str(r.protocol) for r in rows) == ["None", "lidc-v1"]
    text = to_markdown(rows)
    assert text.count("### ") == 2 and "### protocol lidc-v1 / synthetic / preset smoke" in text


def test_a_run_scored_on_another_test_subset_is_loaded_not_retrained(tmp_path):
    out = tmp_path / "b"
    (first,) = run_bench(spec(out, references=False))
    (second,) = run_bench(spec(out, references=False, data_settings={"data.test.limit": 2}))
    assert second["timing"]["train_s"] == first["timing"]["train_s"] and len(second["per_image"]["GED8"]) == 2
    with pytest.raises(Exception, match="another data"):
        run_bench(spec(out, references=False, data_settings={"data.train.limit": 8}))


def test_citation_file_is_valid_and_names_this_version():
    from pathlib import Path

    import yaml

    import ambiseg

    cff = yaml.safe_load((Path(__file__).parents[1] / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == ambiseg.__version__
    assert cff["title"] and cff["message"] and cff["authors"] and "protocol" in cff["message"]


def test_lidc_v2_keeps_lidc_v1_test_slices_and_brings_its_own_presets():
    v1, v2 = get_protocol("lidc-v1"), get_protocol("lidc-v2")
    assert (v2.test_ids_sha256, v2.test_images, v2.data_settings) == (v1.test_ids_sha256, 500, v1.data_settings)
    assert (v1.preset, v2.preset) == ("cpu", "cpu-v2")
    from ambiseg.bench_presets import bench_preset

    v2_bench = bench_preset("cpu-v2")
    assert v2_bench.method_presets_for("lidc") == ("cpu-lidc-v2", "cpu-lidc", "cpu")
    assert v2_bench.data_options("lidc", "val")["limit"] == 200
    assert bench_preset("cpu").method_presets_for("lidc") == ("cpu-lidc", "cpu")


def _lidc_methods() -> list[str]:
    """Every registered recipe with a cpu-lidc preset (a new method is checked without editing this file)."""
    from ambiseg.registry import methods

    return [n for n in methods.names() if "cpu-lidc" in getattr(methods.get(n).info.get("recipe"), "presets", {})]


LIDC_METHODS = _lidc_methods()
assert {"atfm", "cimd", "flow-ssn", "ccdm", "berdiff", "det-unet"} <= set(LIDC_METHODS)


@pytest.mark.parametrize("name", LIDC_METHODS)
def test_every_lidc_method_has_a_cpu_lidc_v2_preset_by_the_one_budget_rule(name):
    import ambiseg
    from ambiseg.methods.budget import V2_SCHEDULE, VAL_IMAGES

    v1 = ambiseg.build(name, preset="cpu-lidc").config
    v2 = ambiseg.build(name, preset="cpu-lidc-v2").config
    assert {k: v for k, v in v2.items() if k != "train"} == {k: v for k, v in v1.items() if k != "train"}
    for stage, cfg in v2["train"].items():
        assert cfg["steps"] >= v1["train"][stage]["steps"] and cfg["val_images"] == VAL_IMAGES
        assert {k: cfg[k] for k in V2_SCHEDULE} == V2_SCHEDULE
        assert cfg["steps"] // cfg["val_every"] in (5, 6, 7)  # about six checks per stage
        assert (cfg["batch_size"], cfg["lr"]) == (v1["train"][stage]["batch_size"], v1["train"][stage]["lr"])


def test_the_budget_rule_refuses_a_stage_without_a_factor():
    from ambiseg.methods.budget import with_lidc_v2

    base = {"cpu-lidc": {"train": {"prior": {"steps": 100}, "transport": {"steps": 100}}}}
    assert with_lidc_v2(base, {"prior": 2, "transport": 1})["cpu-lidc-v2"]["train"]["prior"]["steps"] == 200
    with pytest.raises(ValueError, match=r"no factor for stage\(s\) \['transport'\]"):
        with_lidc_v2(base, {"prior": 2})


def test_a_run_over_its_protocols_budget_is_marked_in_the_leaderboard(tmp_path):
    (record,) = run_bench(spec(tmp_path / "b", methods=["det-unet"]))
    budget = {**get_protocol("lidc-v2").to_dict(), "train_budget_minutes": 40}
    within = {**copy.deepcopy(record), "protocol": budget}
    within["timing"]["train_s"] = 40 * 60.0
    over = {**copy.deepcopy(within), "seed": 1}
    over["timing"] = {**within["timing"], "train_s": 40 * 60.0 + 1}
    assert "over budget" not in to_markdown(build_rows([within]))
    assert "(over budget)" in to_markdown(build_rows([within, over]))
