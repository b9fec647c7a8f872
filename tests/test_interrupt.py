"""SIGKILL a real training process mid-stage; `--resume` ends with the uninterrupted weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from ambiseg.checkpoint import load_checkpoint

ARGS = [
    "train",
    "det-unet",
    "--preset",
    "smoke",
    "--seed",
    "5",
    "--no-progress",
    "--save-every",
    "1",
    "--set",
    "train.transport.steps=30",
    "--set",
    "train.transport.batch_size=2",
]


def train(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "ambiseg", *ARGS, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr
        return res
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    train(tmp_path / "ref")
    reference = load_checkpoint(tmp_path / "ref" / "last.safetensors")

    run = tmp_path / "run"
    proc = train(run, wait=False)
    last = run / "last.safetensors"
    deadline = time.time() + 240
    while time.time() < deadline:
        if last.exists():
            try:
                if load_checkpoint(last).meta.get("step", 0) >= 5:
                    break
            except Exception:  # being replaced right now; look again
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(last).meta
    assert killed_at["stage_index"] == 0 and 5 <= killed_at["step"] < 30, "the kill must land mid-stage"

    train(run, "--resume")
    resumed = load_checkpoint(last)
    assert resumed.meta["stage_index"] == 1
    for key, value in reference.model.items():
        assert torch.equal(value, resumed.model[key]), key
