"""What a bench should expect before it starts: the wall time its methods took on a quiet machine,
and whether other jobs share the cores now.

The times come from `measured_times.json` beside this module, written by
`benchmarks/measured_times.py` from the records of a bench run on an otherwise idle machine; the
file names that machine, the thread count, the commit and the command. A (dataset, preset,
method) without a measurement gets no estimate, never a guess.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MEASURED_TIMES", "load_measured", "expectation_lines", "load_average"]

MEASURED_TIMES = Path(__file__).with_name("measured_times.json")
BUSY_LOAD = 1.0  # a load average this far above zero means at least one other job is running


def load_measured(file: Path = MEASURED_TIMES) -> dict[str, Any]:
    """The measured-times table (empty when the file is missing or unreadable: estimates are optional)."""
    try:
        table = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) and isinstance(table.get("times"), dict) else {}


def load_average() -> float | None:
    """The 1-minute load average, None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def expectation_lines(
    dataset: str,
    preset: str,
    methods: Sequence[str],
    *,
    seeds: int,
    threads: int,
    cpus: int,
    load: float | None,
    table: dict[str, Any] | None = None,
) -> list[str]:
    """Lines for the bench header: the expected wall time of `methods` x `seeds` from the measured
    table (`load_measured()` by default), and a warning when the load says the cores are shared."""
    table = load_measured() if table is None else table
    times = (table.get("times") or {}).get(f"{dataset}/{preset}", {})
    known = [m for m in methods if isinstance(times.get(m), (int, float))]
    lines = []
    if known:
        total = seeds * sum(float(times[m]) for m in known)
        missing = [m for m in methods if m not in known]
        lines.append(
            f"expected wall time: about {_minutes(total)} for {', '.join(known)} x {seeds} seed(s), as measured on "
            f"{table.get('machine', 'a quiet machine')} ({table.get('threads', '?')} threads, ambiseg "
            f"{table.get('commit', '?')[:10]})" + (f"; not measured: {', '.join(missing)}" if missing else "")
        )
    if load is not None and load >= BUSY_LOAD:
        hint = (
            f"load average {load:.1f} on {cpus} CPU(s): other jobs share the cores, so expect longer "
            "(a 1-minute average: a job that ended in the last minutes still counts)"
        )
        if threads > 1:
            hint += (
                f"; {threads} threads on shared cores can run many times slower than 1 "
                "(docs/training-speed.md): consider --threads 1"
            )
        lines.append(hint)
    return lines
