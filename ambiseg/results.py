"""Benchmark records: summary statistics, environment, and reading records back safely."""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .errors import AmbisegError

__all__ = ["bootstrap_ci", "summarise", "environment", "read_records", "RECORD_KIND"]

RECORD_KIND = "ambiseg-bench-record"


def bootstrap_ci(values: np.ndarray, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (over images)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarise(per_image: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """`{metric: {mean, lo, hi, n}}` from per-image values."""
    out = {}
    for key, values in per_image.items():
        arr = np.asarray(values, dtype=np.float64)
        lo, hi = bootstrap_ci(arr)
        out[key] = {"mean": float(np.nanmean(arr)) if arr.size else float("nan"), "lo": lo, "hi": hi, "n": int(arr.size)}
    return out


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def environment(device: torch.device) -> dict[str, Any]:
    """Library versions, device description and the ambiseg commit, for a record."""
    import numpy
    import scipy

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {
        "device": str(device), "device_name": name, "threads": torch.get_num_threads(),
        "versions": {"ambiseg": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
                     "scipy": scipy.__version__, "python": platform.python_version()},
        "commit": _git_commit(), "platform": platform.platform(),
    }


def read_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every bench record in `paths` (files or directories, searched recursively).

    A file that is not a bench record is refused with its name: a leaderboard never mixes in
    unrelated JSON by accident.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if p.parent.name == "results")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise AmbisegError(f"{path} does not exist; give bench output directories or record files")
    records = []
    for file in files:
        try:
            record = json.loads(file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AmbisegError(f"{file} is not a results file (not JSON: {exc})") from None
        if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
            raise AmbisegError(f"{file} is not a results file (no \"kind\": \"{RECORD_KIND}\"); "
                               "pass the output directory of `ambiseg bench` or its results/*.json")
        record["_file"] = str(file)
        records.append(record)
    if not records:
        raise AmbisegError(f"no bench records found in {', '.join(map(str, paths))}; run `ambiseg bench --out DIR` first")
    return records
