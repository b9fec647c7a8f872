"""Trainer: stages, validation and best checkpoint, exact resume, non-finite losses."""

from __future__ import annotations

import json

import pytest
import torch

import ambiseg
from ambiseg import data
from ambiseg.checkpoint import load_checkpoint
from ambiseg.train import Trainer, TrainingError, learning_rate


def sets():
    opts = {"size": 32, "sizes": (8, 2, 2)}
    return data.build("synthetic", split="train", **opts), data.build("synthetic", split="val", **opts)


def small(steps: int = 6, **train):
    return ambiseg.build(
        "det-unet", preset="smoke", train={"transport": {"steps": steps, "batch_size": 3, "lr": 1e-2, **train}}
    )


def interrupt(trainer, monkeypatch, *, at_call):
    """Run `trainer.fit()` until its `at_call`-th loss evaluation raises KeyboardInterrupt (a kill)."""
    method, calls = trainer.method, {"n": 0}
    original = method.loss

    def dying(batch, stage):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(batch, stage)

    monkeypatch.setattr(method, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()


def weights(method):
    return {k: v.clone() for k, v in method.state_dict().items()}


def test_fit_writes_checkpoints_and_history(tmp_path):
    train, val = sets()
    torch.manual_seed(0)
    method = small()
    before = weights(method)
    result = Trainer(method, train, val, out_dir=tmp_path, seed=0, progress=False).fit()
    assert result.steps == {"transport": 6}
    assert any(not torch.equal(before[k], v) for k, v in method.state_dict().items())
    last = load_checkpoint(tmp_path / "last.safetensors", method="det-unet")
    assert last.meta["stage_index"] == 1
    epochs = [h for h in result.history if h["stage"] == "transport"]
    assert len(epochs) == 2 and all(h["val"] is not None for h in epochs)  # 8 images / batch 3 = 3 steps per epoch
    assert result.best["transport"] == min(h["val"] for h in epochs)
    assert (tmp_path / "best.safetensors").exists()


@pytest.mark.parametrize(
    "schedule",
    [{}, {"schedule": "cosine", "warmup": 2, "min_lr": 1e-4}, {"ema": 0.7}],
    ids=["constant", "cosine", "ema"],
)
def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch, schedule):
    train, val = sets()
    torch.manual_seed(0)
    reference = small(7, **schedule)
    Trainer(reference, train, val, out_dir=tmp_path / "ref", seed=3, progress=False, save_every=2).fit()

    torch.manual_seed(0)
    method = small(7, **schedule)
    trainer = Trainer(method, train, val, out_dir=tmp_path / "run", seed=3, progress=False, save_every=2)
    interrupt(trainer, monkeypatch, at_call=6)  # after the checkpoint of step 4, before step 6 is saved
    meta = load_checkpoint(tmp_path / "run" / "last.safetensors").meta
    assert meta["step"] in (3, 4) and meta["epoch"] == 1 and meta["stage"] == "transport"

    torch.manual_seed(99)  # a fresh process would have another RNG state: resume must restore it
    resumed = small(7, **schedule)
    Trainer(resumed, train, val, out_dir=tmp_path / "run", seed=3, progress=False, save_every=2).fit(resume=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_resume_without_the_best_checkpoint_says_so_and_selects_again(tmp_path, monkeypatch):
    """A lost best.safetensors cannot end the stage on the weights it held: the resumed run warns,
    forgets that score and ends on the best of the validations after the resume."""
    import io

    from rich.console import Console

    train, val = sets()
    scores = iter([0.1, 0.9, 0.8])  # the best is the first validation, before the interruption
    monkeypatch.setattr(Trainer, "_validate", lambda self, stage: {"score": next(scores)})
    torch.manual_seed(0)
    method = small(9, val_every=3)
    trainer = Trainer(method, train, val, out_dir=tmp_path, seed=3, progress=False, save_every=1)
    interrupt(trainer, monkeypatch, at_call=5)
    monkeypatch.setattr(Trainer, "_validate", lambda self, stage: {"score": next(scores)})
    assert load_checkpoint(tmp_path / "last.safetensors").meta["best"] == {"transport": 0.1}
    (tmp_path / "best.safetensors").unlink()

    out = io.StringIO()
    resumed = small(9, val_every=3)
    console = Console(file=out, width=400)
    result = Trainer(resumed, train, val, out_dir=tmp_path, seed=3, progress=False, console=console).fit(resume=True)
    assert "best.safetensors is missing" in out.getvalue() and "0.1" in out.getvalue()
    assert result.best == {"transport": 0.8}
    kept = load_checkpoint(tmp_path / "best.safetensors")
    assert kept.meta["step"] == 9
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in kept.model.items())


def test_non_finite_loss_names_stage_epoch_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    train, val = sets()
    method = small(6)
    trainer = Trainer(method, train, None, out_dir=tmp_path, seed=0, progress=False, save_every=1)
    original = method.loss
    calls = {"n": 0}

    def bad(batch, stage):
        calls["n"] += 1
        out = original(batch, stage)
        return {"loss": out["loss"] * float("nan")} if calls["n"] == 5 else out

    monkeypatch.setattr(method, "loss", bad)
    with pytest.raises(TrainingError, match=r"non-finite loss .* stage 'transport', epoch 1, step 4"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "last.safetensors")
    assert ckpt.meta["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt.model.values())


def test_empty_training_set_is_refused():
    with pytest.raises(ambiseg.AmbisegError, match="training set is empty"):
        Trainer(small(), [], None)


def test_val_every_and_csv_learning_curves(tmp_path):
    train, val = sets()
    torch.manual_seed(0)
    method = ambiseg.build("act-gtr", preset="smoke", train={"prior": {"steps": 4, "batch_size": 4, "val_every": 2}})
    log = tmp_path / "curves.csv"
    result = Trainer(method, train, val, out_dir=tmp_path, seed=0, progress=False, log=log).fit()
    assert [h["step"] for h in result.history] == [2, 4]
    lines = log.read_text().splitlines()
    header = lines[0].split(",")
    for key in ("stage", "step", "loss", "val", "val_ged", "val_hm_iou", "val_diversity"):
        assert key in header
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(0.0 <= float(r["val_hm_iou"]) <= 1.0 and float(r["val_ged"]) == float(r["val"]) for r in rows)


def test_learning_rate_schedules():
    cfg = {"lr": 1.0, "warmup": 4, "schedule": "cosine", "min_lr": 0.1}
    assert [learning_rate(cfg, s, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(cfg, 4, 14) == 1.0 and learning_rate(cfg, 13, 14) == pytest.approx(0.1)
    assert learning_rate(cfg, 8, 14) < learning_rate(cfg, 7, 14) < 1.0
    assert learning_rate({**cfg, "schedule": "linear"}, 9, 14) == pytest.approx(0.1 + 0.9 * (1 - 5 / 9))
    assert learning_rate({"lr": 0.3}, 50, 100) == 0.3


def test_lr_reaches_the_optimizer_and_the_history(tmp_path):
    train, val = sets()
    method = small(6, schedule="linear", min_lr=0.0, val_every=3)
    result = Trainer(method, train, val, out_dir=None, seed=0, progress=False).fit()
    rates = [row["lr"] for row in result.history]
    assert rates == [pytest.approx(1e-2 * (1 - 2 / 5)), 0.0]


def test_unknown_schedule_is_refused_with_the_closest_name():
    with pytest.raises(ambiseg.ConfigError, match="schedule.*did you mean 'cosine'"):
        small(schedule="cosin")


@pytest.mark.parametrize(("select", "kept"), [("first-best", 2), ("last-best", 6)])
def test_equal_validation_scores_keep_the_first_or_the_last_step(tmp_path, monkeypatch, select, kept):
    train, val = sets()
    monkeypatch.setattr(Trainer, "_validate", lambda self, stage: {"score": 0.5, "val_ged": 0.5})
    method = small(6, val_every=2, select=select)
    Trainer(method, train, val, out_dir=tmp_path, seed=0, progress=False).fit()
    assert load_checkpoint(tmp_path / "best.safetensors").meta["step"] == kept


def test_weight_average_is_the_ema_of_the_weights_after_each_step():
    from ambiseg.averaging import StageAverage

    net = torch.nn.Linear(1, 1, bias=False)
    average = StageAverage([net], decay=0.5)
    for value in (4.0, 2.0, 6.0):
        net.weight.data.fill_(value)
        average.update()
    with average.applied():
        assert net.weight.item() == pytest.approx(4.5)  # 4, then (4 + 2) / 2 = 3, then (3 + 6) / 2
    assert net.weight.item() == 6.0  # the live weights again
    average.apply()
    assert net.weight.item() == pytest.approx(4.5)


def test_a_stage_with_ema_validates_and_ends_on_the_average(tmp_path, monkeypatch):
    train, val = sets()
    seen = []
    original = Trainer._validate
    monkeypatch.setattr(
        Trainer, "_validate", lambda self, stage: seen.append(weights(self.method)) or original(self, stage)
    )
    torch.manual_seed(0)
    plain = small(6)
    Trainer(plain, train, None, seed=0, progress=False).fit()
    torch.manual_seed(0)
    zero = small(6, ema=0.0)  # an average of decay 0 is the last weights: the same run
    Trainer(zero, train, None, seed=0, progress=False).fit()
    assert all(torch.equal(v, zero.state_dict()[k]) for k, v in plain.state_dict().items())
    seen.clear()
    torch.manual_seed(0)
    method = small(6, ema=0.9, val_every=3, select="last-best")
    Trainer(method, train, val, out_dir=tmp_path, seed=0, progress=False).fit()
    assert any(not torch.equal(v, method.state_dict()[k]) for k, v in plain.state_dict().items())
    final = load_checkpoint(tmp_path / "best.safetensors")
    validated = seen[final.meta["step"] // 3 - 1]  # validations at steps 3 and 6
    assert all(torch.equal(validated[k], v) for k, v in final.model.items())  # the average, validated and saved
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in final.model.items())


def test_ema_outside_0_1_is_refused():
    with pytest.raises(ambiseg.ConfigError, match=r"ema is a decay in \[0, 1\)"):
        small(ema=1.0)


def test_resume_of_a_run_trained_with_ema_without_it_is_refused(tmp_path):
    train, _ = sets()
    Trainer(small(4, ema=0.9), train, None, out_dir=tmp_path, seed=0, progress=False, save_every=2).fit()
    ckpt = tmp_path / "last.safetensors"
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(ckpt), framework="pt") as fh:
        header = fh.metadata()
    meta = json.loads(header["ambiseg"])
    meta.update(stage_index=0, step=2)
    tensors = load_file(str(ckpt))
    tensors["ema/0/n_averaged"] = torch.tensor(2)
    save_file(tensors, str(ckpt), metadata={"ambiseg": json.dumps(meta)})
    with pytest.raises(TrainingError, match="weight average"):
        Trainer(small(4), train, None, out_dir=tmp_path, seed=0, progress=False).check_resume()


def test_unknown_selection_is_refused_with_the_closest_name():
    with pytest.raises(ambiseg.ConfigError, match="select.*did you mean 'last-best'"):
        small(select="last-bets")


@pytest.mark.parametrize(("name", "stage"), [("det-unet", "transport"), ("atfm", "transport")])
def test_channels_last_training_is_the_same_computation_and_gives_the_method_back_contiguous(monkeypatch, name, stage):
    train, _ = sets()
    trained = {}
    for channels_last in (False, True):
        torch.manual_seed(0)
        method = ambiseg.build(name, preset="smoke", train={stage: {"steps": 2, "batch_size": 3}})
        layouts, loss = [], method.loss

        def spy(batch, stage, method=method, layouts=layouts, loss=loss):
            convs = [p for p in method.parameters() if p.ndim == 4]
            layouts.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in convs))
            return loss(batch, stage)

        monkeypatch.setattr(method, "loss", spy)
        Trainer(method, train, None, seed=0, progress=False, channels_last=channels_last).fit()
        assert layouts and set(layouts) == {channels_last}
        trained[channels_last] = method.state_dict()
    plain, fast = trained[False], trained[True]
    assert any(not torch.equal(fast[k], v) for k, v in plain.items())  # another rounding, as documented
    for key, value in plain.items():
        assert fast[key].is_contiguous(), key
        torch.testing.assert_close(fast[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_train_command_takes_channels_last_and_records_it_in_config_json(tmp_path):
    from ambiseg.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "det-unet", "--preset", "smoke", "--out", str(tmp_path), "--no-progress", "--channels-last"])
    assert info.value.code == 0
    assert json.loads((tmp_path / "config.json").read_text())["channels_last"] is True
    assert load_checkpoint(tmp_path / "last.safetensors").meta["stage_index"] == 1


# ---- resume checks the state it continues from (issue 30, causes B and C) ----------------------
def _mid_stage_run(tmp_path, monkeypatch):
    """A det-unet run interrupted after its step-2 checkpoint (optimiser state included)."""
    train, val = sets()
    method = small(6)
    data_spec = {"name": "synthetic", "root": None, "preset": "smoke", "seed": 0, "options": {}, "splits": {}}
    trainer = Trainer(method, train, val, out_dir=tmp_path, seed=0, progress=False, save_every=2, data=data_spec)
    interrupt(trainer, monkeypatch, at_call=3)
    return tmp_path / "last.safetensors", data_spec


def _rewrite(path, meta_changes=None, tensor_changes=None):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["ambiseg"])
    tensors = load_file(str(path))
    meta.update(meta_changes or {})
    tensors.update(tensor_changes or {})
    save_file(tensors, str(path), metadata={"ambiseg": json.dumps(meta)})


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"step": 10**9}, r"'step' is 1000000000, not an integer in 0\.\.6"),
        ({"step": True}, r"'step' is True"),
        ({"seconds": "abc"}, r"'seconds' is 'abc', not a finite number"),
        ({"seconds": -1.0}, r"'seconds' is -1\.0"),
        ({"best": {"transport": "x"}}, r"'best' holds 'transport': 'x'"),
        ({"best": {"nonsense": 0.1}}, r"'best' holds 'nonsense'"),
        ({"best": [1]}, r"'best' is list"),
        ({"history": [1, 2]}, r"'history' row 0 is '1'"),
        ({"history": {"a": 1}}, r"'history' is dict"),
    ],
    ids=[
        "step huge",
        "step bool",
        "seconds text",
        "seconds negative",
        "best text",
        "best stage",
        "best list",
        "history ints",
        "history dict",
    ],
)
def test_resume_refuses_a_training_state_this_run_cannot_reach(tmp_path, monkeypatch, meta, expected):
    path, data_spec = _mid_stage_run(tmp_path, monkeypatch)
    _rewrite(path, meta)
    before = path.read_bytes()
    trainer = Trainer(small(6), sets()[0], None, out_dir=tmp_path, seed=0, progress=False, data=data_spec)
    with pytest.raises(TrainingError, match=expected + ".*the checkpoint is damaged"):
        trainer.fit(resume=True)
    assert path.read_bytes() == before


def test_resume_refuses_an_optimiser_moment_of_the_wrong_shape(tmp_path, monkeypatch):
    path, data_spec = _mid_stage_run(tmp_path, monkeypatch)
    ckpt = load_checkpoint(path)
    key = next(k for k in ckpt.optim if k.endswith("/exp_avg") and ckpt.optim[k].dim() > 1)
    _rewrite(path, tensor_changes={f"optim/{key.split('/', 1)[1]}": torch.zeros(3, 3)})
    trainer = Trainer(small(6), sets()[0], None, out_dir=tmp_path, seed=0, progress=False, data=data_spec)
    with pytest.raises(TrainingError, match=r"optimiser 'exp_avg' of parameter \d+ has shape \(3, 3\)"):
        trainer.check_resume()


def test_resume_on_other_data_is_refused_and_a_new_test_split_is_not_other_data(tmp_path, monkeypatch):
    path, data_spec = _mid_stage_run(tmp_path, monkeypatch)
    lidc = {**data_spec, "name": "lidc", "root": "x.zip"}
    with pytest.raises(ambiseg.ConfigError, match=r"trained on synthetic \(preset smoke.*not on lidc \(root x\.zip"):
        Trainer(small(6), sets()[0], None, out_dir=tmp_path, seed=0, progress=False, data=lidc).check_resume()
    scored_elsewhere = {**data_spec, "splits": {"test": {"limit": 5}}}
    state = Trainer(small(6), sets()[0], None, out_dir=tmp_path, seed=0, progress=False, data=scored_elsewhere)
    assert state.check_resume()["step"] == 2
