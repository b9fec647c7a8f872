"""CLI skeleton: version, list, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import torch

import ambiseg


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ambiseg", *args], capture_output=True, text=True, timeout=120)


def test_version_has_one_source():
    from importlib.metadata import version

    from ambiseg.results import environment

    res = run("--version")
    assert res.returncode == 0 and res.stdout.split()[-1] == ambiseg.__version__
    assert version("ambiseg") == ambiseg.__version__  # the installed metadata reads the package's
    assert environment(torch.device("cpu"))["versions"]["ambiseg"] == ambiseg.__version__


def test_list_shows_every_registry():
    res = run("list")
    assert res.returncode == 0
    for kind in ("priors", "transports", "samplers", "paths", "noise_schedules", "methods", "backbones", "datasets"):
        assert kind in res.stdout
    assert "metrics" in res.stdout and "dopri5" in res.stdout and "unet" in res.stdout
    assert "straight (ot)" in res.stdout and "cosine (vp)" in res.stdout


def test_unknown_command_is_one_line_exit_2():
    res = run("lst")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "list" in res.stderr


def test_show_and_sample_draw_a_checkpoint_samples(tmp_path, capsys):
    import numpy as np
    import pytest
    from PIL import Image

    from ambiseg.checkpoint import save_checkpoint
    from ambiseg.cli import main

    method = ambiseg.build("det-unet", preset="smoke")
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, method, method.config, stage_index=1)
    with pytest.raises(SystemExit) as info:
        main(
            [
                "show",
                "--split",
                "test",
                "--index",
                "1",
                "--set",
                "size=32",
                "--checkpoint",
                str(ckpt),
                "--samples",
                "3",
                "--out",
                str(tmp_path / "fig.png"),
            ]
        )
    assert info.value.code == 0
    assert Image.open(tmp_path / "fig.png").size[0] > 100
    with pytest.raises(SystemExit) as info:
        main(
            [
                "sample",
                str(ckpt),
                "--preset",
                "smoke",
                "--indices",
                "0,2",
                "--samples",
                "5",
                "--out",
                str(tmp_path / "s"),
            ]
        )
    assert info.value.code == 0
    saved = np.load(tmp_path / "s" / "samples.npz")
    assert saved["samples"].shape == (2, 5, 32, 32) and set(np.unique(saved["samples"])) <= {0, 1}
    assert sorted(p.name for p in (tmp_path / "s").glob("*.png")) == ["sample-test-0.png", "sample-test-2.png"]


def test_eval_inference_options_change_speed_not_scores(tmp_path, capsys):
    """--image-batch and --channels-last give the scores of the defaults; the record stores them."""
    import json

    import pytest
    import torch

    from ambiseg.checkpoint import save_checkpoint
    from ambiseg.cli import main

    torch.manual_seed(0)
    method = ambiseg.build("atfm", preset="smoke")
    with torch.no_grad():  # wake the zero-initialised velocity head so the flow moves the samples
        method.transport.net.head.weight.normal_(std=0.1)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, method, method.config, stage_index=len(method.stages))
    scores = {}
    for label, flags in {"default": [], "one-image": ["--image-batch", "1"], "cl": ["--channels-last"]}.items():
        with pytest.raises(SystemExit) as info:
            main(
                [
                    "eval",
                    str(ckpt),
                    "--preset",
                    "smoke",
                    "--samples",
                    "3",
                    "--out",
                    str(tmp_path / f"{label}.json"),
                    *flags,
                ]
            )
        assert info.value.code == 0
        scores[label] = json.loads((tmp_path / f"{label}.json").read_text())
    assert scores["cl"]["timing"]["inference"]["channels_last"]
    assert scores["one-image"]["timing"]["inference"]["image_batch"] == 1
    from ambiseg.results import read_records

    (record,) = read_records([tmp_path / "default.json"])  # a record in the bench's schema
    assert record["split"] == "test" and record["timing"]["samples_per_image"] == 3
    printed = capsys.readouterr().out
    for key in ("Stray", "MissedConsensus", "SoftShare"):  # printed and written, null where undefined
        assert f"{key}:" in printed and len(scores["default"]["per_image"][key]) == 4
    for label in ("one-image", "cl"):
        for key, values in scores["default"]["per_image"].items():
            assert scores[label]["per_image"][key] == pytest.approx(values, abs=1e-6), (label, key)


def test_a_piped_leaderboard_prints_every_cell_whole(tmp_path):
    """Off a terminal (a pipe, `COLUMNS=80`) the console table is laid out at its own width: every
    cell of every column is printed as `to_rich` holds it, none cut to `0.…`."""
    import io
    import os

    from rich.console import Console

    from ambiseg.files import write_json
    from ambiseg.leaderboard import build_rows, to_rich
    from ambiseg.results import RECORD_KIND, read_records

    keys = ["GED16", "GED32", "GED100", "Diversity100", "HM-IoU32", "HM-IoU100", "MDM32", "TrueGED100", "ModeTV100"]
    keys += ["Stray", "MissedConsensus", "SoftShare"]
    for k, method in enumerate(["atfm", "a-plug-in-method-with-a-rather-long-name"]):
        values = {key: [0.1 + 0.01 * (i + j + k) for i in range(4)] for j, key in enumerate(keys)}
        record = {
            "kind": RECORD_KIND,
            "dataset": "synthetic",
            "preset": "smoke",
            "method": method,
            "seed": 0,
            "created": "2025-01-01T00:00:00+00:00",
            "per_image": values,
            "untrained": {"GED": 1.25, "samples": 16},
            "timing": {"train_s": 12.5, "sample_s_per_image": 0.125, "samples_per_image": 100},
            "params": 1000,
            "env": {"device": "cpu", "device_name": "CPU"},
        }
        write_json(tmp_path / "bench" / "results" / f"{method}.json", record)
    (table,) = to_rich(build_rows(read_records([tmp_path / "bench"])))
    narrow = io.StringIO()
    Console(file=narrow, width=200).print(table)
    assert "…" in narrow.getvalue()  # the width the console used to have cuts this table

    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    args = ["leaderboard", str(tmp_path / "bench"), "--out", str(tmp_path / "board")]
    res = subprocess.run([sys.executable, "-m", "ambiseg", *args], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout
    for column in table.columns:
        lines = [line for line in res.stdout.splitlines() if column.header in line]
        assert lines, column.header  # the header whole
        for cell in column.cells:
            assert f" {cell} " in res.stdout, (column.header, cell)
