"""The README's optional CPU-only install: its line fetches both torch and torchvision from
PyTorch's CPU index, and the project install that follows keeps an installed torch instead of
replacing it with the default (CUDA) build. The download itself needs download.pytorch.org and
is not run here; what is tested offline is the part the README promises ("which keeps them")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def readme_bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line for block in blocks for line in block.splitlines()]


def test_the_cpu_only_line_takes_torch_and_torchvision_from_the_cpu_index():
    (line,) = [line for line in readme_bash_lines() if CPU_INDEX in line]
    pip = line.split("pip install", 1)[1].split()
    packages = [word for word in pip if not word.startswith("-") and word != CPU_INDEX]
    assert sorted(packages) == ["torch", "torchvision"]  # torchvision from PyPI would pull its own torch pin
    assert pip[pip.index("--index-url") + 1] == CPU_INDEX  # the only index: no CUDA wheel can win


def test_installing_the_project_keeps_the_installed_torch(tmp_path):
    """`pip install -e .` with no index at all: it resolves only if every requirement is met by
    what is installed, and its report lists what it would install: ambiseg alone, so an installed
    torch/torchvision (the CPU wheels, after the README's line) stays."""
    pytest.importorskip("setuptools")  # the build backend, used without build isolation (offline)
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation"]
    cmd += ["--disable-pip-version-check", "-q", "--report", str(report), "-e", str(ROOT)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    names = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert names == ["ambiseg"]
