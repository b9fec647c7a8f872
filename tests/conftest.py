"""Test-wide settings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests use tiny nets, which gain nothing from intra-op threads; on a busy machine OpenMP
    threads spin-waiting for a core cost ten times the work. Subprocesses set OMP_NUM_THREADS."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
