"""What every command needs around a model: batching dataset items, moving them to a device,
choosing that device, and seeding the random number generators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["collate", "to_device", "pick_device", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python's `random`."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds numpy's global RNG that user code may draw from
    torch.manual_seed(seed)


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensor fields of dataset items; other fields become lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def pick_device(device: str | None) -> torch.device:
    """`None`/"auto" -> CUDA when present, else CPU; a clear error for an unusable device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"device '{device}' is not supported (ambiseg trains and samples on cpu or cuda); "
            "use cpu, cuda, cuda:N or auto"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device '{device}' does not exist; this machine has {torch.cuda.device_count()} "
            f"CUDA device(s), cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return dev
