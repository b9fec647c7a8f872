"""How many CPU threads torch computes with: `--threads`, else `OMP_NUM_THREADS`, else the CPUs
this process may use.

torch's default follows the process's affinity mask but not a cgroup CPU quota (`docker run
--cpus 2`, a Kubernetes CPU limit): a quota is a share of time, so every core of the host stays
visible and torch starts a thread per core. Threads beyond the CPUs the process gets wait for
each other at every parallel op: OpenMP threads spin at each barrier, and one that has lost its
core holds the others up (docs/training-speed.md, "Threads"). So the default is the affinity
mask capped by the quota. The thread count also changes the order of sums, so results differ
in the last bits between counts.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import ConfigError

__all__ = ["ENV_VAR", "CGROUP_ROOT", "cpu_quota", "available_cpus", "choose_threads", "using_threads"]

ENV_VAR = "OMP_NUM_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")  # a container's own cgroup is mounted here


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs the cgroup at `root` may use per period: quota / period from `cpu.max` (cgroup v2)
    or `cpu/cpu.cfs_quota_us` and `cpu/cpu.cfs_period_us` (v1); None when unlimited or unreadable."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # "max 100000" or "150000 100000"
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()  # -1: unlimited
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        share = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):  # "max", or a file this reader does not know
        return None
    return share if share > 0 else None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (its affinity mask), capped by the cgroup quota at `root`
    rounded down (1.5 CPUs of quota: 1 thread), and at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this platform (macOS, Windows)
        cpus = os.cpu_count() or 1
    quota = cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def choose_threads(
    requested: int | None = None, *, environ: Mapping[str, str] = os.environ, root: Path = CGROUP_ROOT
) -> int:
    """The thread count: `requested` (`--threads`) when given, else `OMP_NUM_THREADS` when set
    (its first entry), else `available_cpus(root)`. A count below 1 is a ConfigError."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads must be a positive integer, got {requested}")
        return requested
    raw = environ.get(ENV_VAR, "").strip()
    if not raw:
        return available_cpus(root)
    try:
        count = int(raw.split(",")[0])  # OpenMP allows a list: one count per nesting level
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"{ENV_VAR} is {raw!r}, not a positive integer; set it to a thread count or unset it")
    return count


@contextlib.contextmanager
def using_threads(count: int) -> Iterator[None]:
    """torch computes with `count` threads inside the block, and with as many as before after it.

    The inter-op pool is set to `count` as well where torch allows it: once per process, before
    any parallel work has started.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work has started
        torch.set_num_interop_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
