"""torchrun / DDP support: process-group set-up, rank queries, sharding and gathering.

Under `torchrun` (WORLD_SIZE > 1 in the environment) `setup()` joins the process group
(nccl on GPU, gloo on CPU) and pins each rank to its local GPU; without it every helper here
is a no-op, so single-process code paths stay exactly as they are.

The launch variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) are checked
before joining, and the rendezvous gives up after AMBISEG_DIST_TIMEOUT seconds (default 300),
saying so while it waits: a rank that is never started is one line, not a silent hang.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from .errors import AmbisegError, ConfigError

__all__ = [
    "TIMEOUT_VAR",
    "DEFAULT_TIMEOUT_S",
    "Launch",
    "launch_env",
    "setup",
    "teardown",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "shard",
    "gather_objects",
    "broadcast_object",
    "local_device",
    "distributed_run",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the only rank that writes files."""
    return rank() == 0


TIMEOUT_VAR = "AMBISEG_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
_NOTICE_AFTER_S = 2.0
_LAUNCH = "launch with torchrun (e.g. torchrun --nproc-per-node 2 -m ambiseg ...), or unset WORLD_SIZE"


@dataclasses.dataclass(frozen=True)
class Launch:
    """The checked torchrun variables of this process."""

    world_size: int
    rank: int
    local_rank: int
    master_addr: str
    master_port: int
    timeout_s: float

    def where(self) -> str:
        return f"rank {self.rank} of {self.world_size} at {self.master_addr}:{self.master_port}"


def _env_int(name: str, low: int, high: int, default: int | None = None) -> int:
    """Environment variable `name` as an integer in low..high (`default` when unset), or a ConfigError."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        if default is None:
            raise ConfigError(f"{name} is not set but WORLD_SIZE asks for a distributed run; {_LAUNCH}")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; {_LAUNCH}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}; {_LAUNCH}")
    return value


def _timeout() -> float:
    """Seconds the rendezvous waits for every rank: AMBISEG_DIST_TIMEOUT, default 300."""
    raw = os.environ.get(TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86_400:
        raise ConfigError(f"{TIMEOUT_VAR}={raw!r} must be a number of seconds in (0, 86400]")
    return value


def launch_env() -> Launch | None:
    """The checked launch variables, or None for a single process (WORLD_SIZE unset or 1)."""
    if not os.environ.get("WORLD_SIZE", "").strip():
        return None
    world = _env_int("WORLD_SIZE", 1, 1_000_000)
    if world == 1:
        return None
    rank = _env_int("RANK", 0, world - 1)
    local_rank = _env_int("LOCAL_RANK", 0, world - 1, default=0)
    addr = os.environ.get("MASTER_ADDR", "").strip()
    if not addr:
        raise ConfigError(f"MASTER_ADDR is not set but WORLD_SIZE={world} asks for a distributed run; {_LAUNCH}")
    port = _env_int("MASTER_PORT", 1, 65_535)
    return Launch(world, rank, local_rank, addr, port, _timeout())


def local_device(device: torch.device) -> torch.device:
    """On CUDA, the GPU of this rank (LOCAL_RANK); otherwise `device` unchanged."""
    launch = launch_env() if device.type == "cuda" and is_distributed() else None
    return torch.device("cuda", launch.local_rank) if launch is not None else device


def setup(device: torch.device | None = None) -> bool:
    """Join the process group when launched by torchrun; returns whether this run is distributed."""
    if is_distributed():
        return True
    launch = launch_env()
    if launch is None:
        return False
    cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
    if cuda:
        if launch.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={launch.local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                "start at most one rank per GPU"
            )
        torch.cuda.set_device(launch.local_rank)
    store = _rendezvous(launch)
    try:
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", store=store, rank=launch.rank, world_size=launch.world_size
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise AmbisegError(f"{launch.where()}: the process group failed to start ({_first_line(exc)})") from None
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:300] if text else type(exc).__name__) or type(exc).__name__


def _rendezvous(launch: Launch) -> Any:
    """The store every rank reached, within `launch.timeout_s`; a note on stderr while waiting and
    one error line when a rank never came."""
    notice = threading.Timer(
        _NOTICE_AFTER_S,
        lambda: print(
            f"{launch.where()}: waiting for the other ranks (giving up after {launch.timeout_s:g} s; "
            f"set {TIMEOUT_VAR} to change)",
            file=sys.stderr,
            flush=True,
        ),
    )
    notice.daemon = True
    notice.start()
    deadline = time.monotonic() + launch.timeout_s
    try:
        if launch.rank != 0:
            _wait_for_master(launch, deadline)  # torch's own retries log C++ stack traces
        store, _, _ = next(
            dist.rendezvous(
                "env://",
                rank=launch.rank,
                world_size=launch.world_size,
                timeout=dt.timedelta(seconds=launch.timeout_s),
            )
        )
        _count_in(store, launch, deadline)
        store.set_timeout(dist.default_pg_timeout)
    except AmbisegError:
        raise
    except (RuntimeError, ValueError, OSError) as exc:
        raise AmbisegError(
            f"{launch.where()}: the ranks could not meet within {launch.timeout_s:g} s ({_first_line(exc)}); "
            f"start all {launch.world_size} ranks (torchrun --nproc-per-node N), check MASTER_ADDR/MASTER_PORT, "
            f"or raise {TIMEOUT_VAR}"
        ) from None
    finally:
        notice.cancel()
    return store


def _wait_for_master(launch: Launch, deadline: float) -> None:
    """Return once something listens at MASTER_ADDR:MASTER_PORT, or raise before `deadline`."""
    while True:
        try:
            with socket.create_connection((launch.master_addr, launch.master_port), timeout=2.0):
                return
        except socket.gaierror as exc:
            raise ConfigError(f"MASTER_ADDR={launch.master_addr!r} cannot be resolved ({exc.strerror})") from None
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("rank 0 never listened there") from None
            time.sleep(0.2)


def _count_in(store: Any, launch: Launch, deadline: float) -> None:
    """Wait until every rank has counted itself in on `store` (also when torchrun's agent hosts the
    store, which does not wait for the ranks itself)."""
    key = f"ambiseg/joined/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    joined = store.add(key, 1)
    while joined < launch.world_size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{joined} of {launch.world_size} ranks joined")
        time.sleep(0.05)
        joined = store.add(key, 0)


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(items: list[Any]) -> list[Any]:
    """This rank's share of `items` (strided, so shares differ in length by at most one)."""
    return items[rank() :: world_size()]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def distributed_run(device: torch.device, console: Any = None) -> Iterator[torch.device]:
    """Join the group when under torchrun, yield this rank's device, leave the group at the end.

    On ranks other than 0 the given rich `console` is silenced.
    """
    joined = setup(device)
    if joined and not is_main() and console is not None:
        console.quiet = True
    try:
        yield local_device(device)
        if joined:
            barrier()  # no rank leaves the group while another still talks to it (a gloo rank that
            # did abort at exit under load); only on the normal path: after an error it would hang
    finally:
        if joined:
            teardown()
