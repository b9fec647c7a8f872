"""Test-wide settings."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use tiny nets, which gain nothing from intra-op threads; on a busy machine OpenMP
    threads spin-waiting for a core cost ten times the work. OMP_NUM_THREADS=1 too: the CLI's
    commands called in-process follow it (ambiseg.threads), and so do subprocesses."""
    before, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if variable is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = variable


def _write_plugin(folder: Path, module: str, source: str, *, entry: str = "demo") -> None:
    """An installed distribution in `folder`: `module`.py holding `source`, and a dist-info whose
    `ambiseg.plugins` entry point `entry` names that module. Put `folder` on sys.path to install it."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    dist = folder / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ambiseg.plugins]\n{entry} = {module}\n")


@pytest.fixture
def write_plugin():
    """`write_plugin(folder, module, source, entry="demo")`: a plug-in distribution (see `_write_plugin`)."""
    return _write_plugin
