"""torchrun / DDP support: process-group set-up, rank queries, sharding and gathering.

Under `torchrun` (WORLD_SIZE > 1 in the environment) `setup()` joins the process group
(nccl on GPU, gloo on CPU) and pins each rank to its local GPU; without it every helper here
is a no-op, so single-process code paths stay exactly as they are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
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


def local_device(device: torch.device) -> torch.device:
    """On CUDA, the GPU of this rank (LOCAL_RANK); otherwise `device` unchanged."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def setup(device: torch.device | None = None) -> bool:
    """Join the process group when launched by torchrun; returns whether this run is distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


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
    finally:
        if joined:
            teardown()
