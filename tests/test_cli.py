"""CLI skeleton: version, list, one-line errors with exit code 2."""
from __future__ import annotations

import subprocess
import sys

import ambiseg


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ambiseg", *args], capture_output=True, text=True, timeout=120)


def test_version():
    res = run("--version")
    assert res.returncode == 0 and ambiseg.__version__ in res.stdout


def test_list_shows_every_registry():
    res = run("list")
    assert res.returncode == 0
    for kind in ("priors", "transports", "samplers", "methods", "backbones", "datasets", "metrics"):
        assert kind in res.stdout
    assert "dopri5" in res.stdout and "unet" in res.stdout


def test_unknown_command_is_one_line_exit_2():
    res = run("lst")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "list" in res.stderr
