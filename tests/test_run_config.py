"""Runs remember their data and configs never lie (issue 12).

Each test here failed before the fix it names: evaluation on the run's own data, typed `--set`
values, top-level sizes reaching every component, one build from the final config,
`**kwargs` subclasses keeping their parent's options, the Trainer refusing a method it could not
checkpoint, and the paper preset's ISIC3 size.
"""

from __future__ import annotations

import json

import pytest
import torch

import ambiseg
from ambiseg.cli import main
from ambiseg.config import apply_overrides
from ambiseg.data import DataSpec
from ambiseg.errors import ConfigError
from ambiseg.method import Method
from ambiseg.methods.gtr import GTRPrior
from ambiseg.recipes import build_for_data, method_config
from ambiseg.registry import Registry
from ambiseg.runtime import seed_everything
from ambiseg.train import Trainer


def run_cli(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A det-unet trained for 2 steps on the smoke synthetic data at 32 px."""
    out = tmp_path_factory.mktemp("run")
    with pytest.raises(SystemExit) as info:
        main(["train", "det-unet", "--preset", "smoke", "--out", str(out), "--no-progress"])
    assert info.value.code == 0
    return out


def test_checkpoint_and_config_json_record_the_data(smoke_run):
    from ambiseg.checkpoint import load_checkpoint

    recorded = load_checkpoint(smoke_run / "last.safetensors").meta["data"]
    assert recorded == DataSpec(preset="smoke").to_dict()
    assert json.loads((smoke_run / "config.json").read_text())["data"] == recorded


def test_eval_without_data_flags_scores_the_runs_own_data(smoke_run, capsys):
    out = smoke_run / "eval.json"
    code, err = run_cli(["eval", str(smoke_run / "last.safetensors"), "--samples", "2", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["data"]["preset"] == "smoke" and result["metrics"]["GED2"]["n"] == 4  # the smoke test split


def test_eval_on_data_of_another_size_is_one_line(smoke_run, capsys):
    code, err = run_cli(["eval", str(smoke_run / "last.safetensors"), "--preset", "cpu", "--samples", "2"], capsys)
    assert code == 2 and "\n" not in err
    assert "trained on 1-channel 32x32 images" in err and "64x64" in err


def test_eval_on_other_explicit_data_and_whole_dataset(smoke_run, capsys):
    out = smoke_run / "all.json"
    code, err = run_cli(
        [
            "eval",
            str(smoke_run / "last.safetensors"),
            "--split",
            "all",
            "--samples",
            "2",
            "--set",
            "data.sizes=3,2,1",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["split"] == "all" and result["metrics"]["GED2"]["n"] == 6
    assert result["data"]["options"] == {"sizes": [3, 2, 1]} and result["data"]["preset"] == "smoke"  # 32 px


def test_eval_applies_sampling_settings_to_the_trained_weights(tmp_path, capsys):
    from ambiseg.checkpoint import load_method, save_checkpoint

    trained = ambiseg.build("atfm", preset="smoke")
    path = tmp_path / "atfm.safetensors"
    save_checkpoint(path, trained, trained.config, stage_index=2)
    method, _ = load_method(path, overrides={"sampler.steps": 3, "prior.temperature": 0.5})
    assert method.sampler.steps == 3 and method.prior.temperature == 0.5
    for key, value in trained.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key
    out = tmp_path / "eval.json"
    code, err = run_cli(
        [
            "eval",
            str(path),
            "--preset",
            "smoke",
            "--samples",
            "2",
            "--set",
            "data.test.limit=2",
            "--set",
            "sampler.steps=3",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["overrides"] == {"sampler.steps": 3} and record["config"]["sampler"]["steps"] == 3


# ---- --set values are typed -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("transport.truncation", "abc", "cannot read 'abc' as int | None"),
        ("transport.steps", "[1, 2]", "cannot read [1, 2] as int"),
        ("train.transport.lr", "fast", "train.transport.lr: cannot read 'fast' as float"),
        ("train.transport.lrr", "1", "train.transport has no option 'lrr' (did you mean 'lr'?)"),
        ("train.transprt.lr", "1", "has no stage 'transprt' (did you mean 'transport'?)"),
        ("image_size", "big", "image_size: cannot read 'big' as int | None"),
        ("max_batch", "0", "max_batch: expected a positive integer"),
        ("prior.in_channels", "3", "use 'in_channels'"),
    ],
)
def test_bad_override_values_name_key_value_and_type(key, value, expected):
    with pytest.raises(ConfigError, match=None) as info:
        Method.from_config(method_config("cimd", preset="smoke", overrides={key: json_or_str(value)}))
    assert expected in str(info.value) and "\n" not in str(info.value)


def json_or_str(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def test_optional_values_accept_none_and_numbers():
    cfg = method_config("cimd", preset="smoke", overrides={"transport.truncation": "none"})
    assert Method.from_config(cfg).config["transport"]["truncation"] is None
    cfg = method_config("tdpm", preset="smoke", overrides={"transport.truncation": "7"})
    assert Method.from_config(cfg).config["transport"]["truncation"] == 7


def test_bad_data_settings_are_refused():
    spec = DataSpec(preset="smoke")
    assert spec.with_settings({"data.limit": "3", "data.test.limit": 2}).options_for("test")["limit"] == 2
    with pytest.raises(ConfigError, match="data.limit: cannot read 'abc' as int | None"):
        spec.with_settings({"data.limit": "abc"})
    with pytest.raises(ConfigError, match="has no option 'limt' \\(did you mean 'limit'\\?\\)"):
        spec.with_settings({"data.limt": 3})
    with pytest.raises(ConfigError, match="unknown split"):
        spec.with_settings({"data.tset.limit": 3})
    with pytest.raises(ConfigError, match="--root"):
        spec.with_settings({"data.root": "x"})


# ---- one build, from the final config -------------------------------------------------------------
def test_top_level_sizes_reach_every_component():
    config = apply_overrides(ambiseg.build("atfm", preset="smoke").config, {"in_channels": 3})
    method = Method.from_config(config)
    assert method.config["in_channels"] == 3
    assert method.config["prior"]["in_channels"] == method.config["transport"]["in_channels"] == 3
    probs = method.sample(torch.rand(1, 3, 16, 16), 2, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (1, 2, 16, 16)


def test_a_component_size_contradicting_the_method_is_refused():
    config = ambiseg.build("atfm", preset="smoke").config
    config["prior"]["in_channels"] = 3
    with pytest.raises(ConfigError, match="prior.in_channels = 3 contradicts the method's in_channels = 1"):
        Method.from_config(config)


def test_an_image_size_contradicting_the_data_is_refused():
    data = ambiseg.data.build("synthetic", split="train", size=16, sizes=(2, 1, 1))
    with pytest.raises(ConfigError, match="image_size=48 contradicts the data, which has 16"):
        build_for_data("phiseg", data, preset="smoke", overrides={"image_size": 48})


@pytest.mark.parametrize("name", ambiseg.registry.methods.names())
def test_saved_config_rebuilds_bit_identical_modules(name):
    data = ambiseg.data.build("synthetic", split="train", size=32, sizes=(2, 1, 1))
    seed_everything(0)
    method = build_for_data(name, data, preset="smoke", overrides={"max_batch": 32})
    config = json.loads(json.dumps(method.config))  # as stored in a checkpoint or record
    seed_everything(0)
    again = Method.from_config(config)
    assert again.config == method.config == config
    ours, theirs = method.state_dict(), again.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key


# ---- registry: **kwargs subclasses keep their parent's options --------------------------------------
def test_kwargs_subclass_keeps_parent_options():
    registry = Registry("priors")

    @registry.register("tempered-gtr")
    class TemperedGTR(GTRPrior):
        def __init__(self, *, temperature: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.temperature = temperature

    prior = registry.create("tempered-gtr", rank="3", temperature="0.5", widths=[8, 16], features=8)
    assert prior.temperature == 0.5 and prior.rank == 3
    with pytest.raises(ConfigError, match="cannot read 'x' as int"):
        registry.create("tempered-gtr", rank="x")


# ---- the Trainer refuses what it could not checkpoint ---------------------------------------------
def test_trainer_refuses_a_method_composed_from_instances(tmp_path):
    parts = ambiseg.build("act-gtr", preset="smoke")
    method = ambiseg.compose(prior=parts.prior, transport=parts.transport, sampler=parts.sampler)
    data = ambiseg.data.build("synthetic", split="train", size=16, sizes=(2, 1, 1))
    with pytest.raises(ConfigError, match="composed from instances"):
        Trainer(method, data, out_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    Trainer(method, data, out_dir=None, progress=False)  # nothing to checkpoint: allowed


# ---- presets -------------------------------------------------------------------------------------
def test_paper_preset_uses_256_px_isic3():
    assert DataSpec(name="isic3", preset="paper").options_for("train")["size"] == 256
    assert "size" not in DataSpec(name="lidc", preset="paper").options_for("train")  # stored crops: 128 px


def test_data_seed_is_fixed_across_training_seeds(tmp_path):
    from ambiseg.bench import BenchSpec

    spec = BenchSpec(methods=["det-unet"], preset="smoke", data_settings={"data.seed": 3})
    assert spec.data_spec().seed == 3 and BenchSpec(methods=["det-unet"]).data_spec().seed == 0


def test_lidc_cpu_uses_each_recipes_lidc_preset_where_it_has_one():
    from ambiseg.bench_presets import bench_preset
    from ambiseg.recipes import pick_preset

    candidates = bench_preset("cpu").method_presets_for("lidc")
    assert candidates == ("cpu-lidc", "cpu") and bench_preset("cpu").method_presets_for("synthetic") == ("cpu",)
    assert pick_preset("atfm", candidates) == "cpu-lidc" and pick_preset("phiseg", ("cpu-isic3", "cpu")) == "cpu"
    config = method_config("act-gtr", preset="cpu-lidc")
    assert config["prior"]["centre_factor"] and config["prior"]["norm"] == "group"
    test = DataSpec(name="lidc", root="x", preset="cpu").options_for("test")
    assert test["crop"] == 64 and test["limit"] == 500
    assert "limit" not in DataSpec(name="lidc", root="x", preset="cpu").options_for("train")
