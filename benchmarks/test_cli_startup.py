"""Start-up time of the command line: `ambiseg --help`, `ambiseg --version` and `ambiseg list`,
each a new process, with the bare interpreter as the floor.

Run: `OMP_NUM_THREADS=1 python -m pytest benchmarks/test_cli_startup.py -s -p no:cacheprovider`.
The `ambiseg` script beside the interpreter is timed (`python -m ambiseg` where there is none),
from the start of the process to its exit, 5 rounds after a warm-up one (which fills the OS file
cache). Each test prints its median; docs/startup.md lists the measured ones.
That none of these loads torch is a test: tests/test_startup.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("ambiseg")
AMBISEG = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "ambiseg"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "ambiseg --help": [*AMBISEG, "--help"],
    "ambiseg --version": [*AMBISEG, "--version"],
    "ambiseg list": [*AMBISEG, "list"],
}


@pytest.mark.benchmark(group="cli-startup")
@pytest.mark.parametrize("label", list(COMMANDS))
def test_startup(benchmark, label, capsys):
    def start() -> subprocess.CompletedProcess:
        return subprocess.run(COMMANDS[label], capture_output=True, text=True, timeout=120)

    result = benchmark.pedantic(start, rounds=5, warmup_rounds=1)
    assert result.returncode == 0, result.stderr
    benchmark.extra_info["command"] = " ".join(COMMANDS[label])
    if benchmark.stats is not None:
        with capsys.disabled():
            print(f"\n{label}: median {benchmark.stats.stats.median:.3f} s, min {benchmark.stats.stats.min:.3f} s")
