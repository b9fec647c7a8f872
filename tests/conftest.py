"""Test-wide settings."""

from __future__ import annotations

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
