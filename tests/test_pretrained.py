"""Published runs by name (`ambiseg.load_pretrained`, `ambiseg pretrained`): found offline in the
checkout, exported with their record and model card, loaded from an exported folder as an
installed package would, and refused clearly when absent."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import ambiseg
from ambiseg import pretrained
from ambiseg.cli import main
from ambiseg.errors import AmbisegError


def test_a_committed_run_loads_by_name_with_its_record_and_card():
    model = ambiseg.load_pretrained("atfm", protocol="lidc-v1", seed=1)
    run = model.pretrained
    assert run.checkpoint.name == "last.safetensors" and run.checkpoint.parent.name == "atfm-lidc-cpu-seed1"
    stored = load_file(str(run.checkpoint))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items() if k in state) and not model.training
    assert run.record["method"] == "atfm" and run.record["seed"] == 1
    ged = run.record["metrics"]["GED100"]
    assert f"| GED100 | {ged['mean']:.3f} [{ged['lo']:.3f}, {ged['hi']:.3f}] |" in run.card
    assert "not a clinical tool" in run.card and "lidc-v1" in run.card
    alias = ambiseg.load_pretrained("ssn", protocol="lidc-v1", seed=0)  # aliases resolve to the recipe
    assert alias.pretrained.method == "act-gtr"


def test_absent_weights_are_refused_naming_what_exists_and_how_to_provide_them():
    with pytest.raises(AmbisegError) as info:
        ambiseg.load_pretrained("atfm", protocol="lidc-v1", seed=7)
    message = str(info.value)
    assert "no pretrained weights of atfm for protocol lidc-v1, seed 7 are available offline" in message
    assert "atfm lidc-v1 seed 1" in message and "AMBISEG_WEIGHTS" in message and "downloads nothing" in message


def test_an_exported_run_serves_an_installation_without_the_repository(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrained", "probunet", "--protocol", "lidc-v1", "--seed", "2", "--export", str(tmp_path / "w")])
    assert info.value.code == 0
    folder = tmp_path / "w" / "lidc-v1" / "probunet-seed2"
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "checkpoint.safetensors", "record.json"]
    assert json.loads((folder / "record.json").read_text())["checkpoint"] == "checkpoint.safetensors"
    with pytest.raises(SystemExit) as info:  # a second export never overwrites the first
        main(["pretrained", "probunet", "--protocol", "lidc-v1", "--seed", "2", "--export", str(tmp_path / "w")])
    assert info.value.code == 2 and "exists" in capsys.readouterr().err
    # an installed package: no checkout among the roots, the exported folder in AMBISEG_WEIGHTS
    monkeypatch.setattr(pretrained, "weight_roots", lambda: [tmp_path / "w"])
    model = ambiseg.load_pretrained("probunet", protocol="lidc-v1", seed=2)
    assert model.pretrained.checkpoint == folder / "checkpoint.safetensors"
    assert [(r.method, r.seed) for r in ambiseg.list_pretrained()] == [("probunet", 2)]
    with pytest.raises(AmbisegError, match="of probunet there are: probunet lidc-v1 seed 2"):
        ambiseg.load_pretrained("probunet", protocol="lidc-v1", seed=0)


def test_the_weight_roots_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBISEG_WEIGHTS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    roots = pretrained.weight_roots()
    assert roots[:3] == [tmp_path / "a", tmp_path / "b", tmp_path / "cache" / "ambiseg" / "weights"]


def test_the_cli_lists_runs_and_prints_a_card(capsys):
    with pytest.raises(SystemExit) as info:
        main(["pretrained"])
    listed = capsys.readouterr().out
    assert info.value.code == 0 and "atfm           lidc-v1  seed 1" in listed
    with pytest.raises(SystemExit) as info:
        main(["pretrained", "atfm", "--seed", "1"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("checkpoint: ") and "# atfm - lidc-v1, seed 1" in out


def test_commands_take_a_pretrained_name_for_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as info:
        main(["sample", "pretrained:det-unet/lidc-v1/seed0", "--data", "synthetic", "--preset", "smoke",
              "--set", "data.size=64", "--samples", "2", "--out", str(out)])  # fmt: skip
    assert info.value.code == 0 and (out / "samples.npz").is_file()
    for bad in ("pretrained:atfm/lidc-v1", "pretrained:atfm/lidc-v1/one"):
        with pytest.raises(SystemExit) as info:
            main(["eval", bad, "--out", str(tmp_path / "e.json")])
        assert info.value.code == 2 and "write pretrained:<method>/<protocol>/seed<k>" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()
