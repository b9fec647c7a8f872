"""An exponential moving average of a training stage's weights (`train.<stage>.ema`).

Built on `torch.optim.swa_utils.AveragedModel` with its EMA update, buffers (BatchNorm
statistics) averaged too. The trainer validates and checkpoints the average, and a stage ends
on it; `state` / `load` carry it through `last.safetensors`, so a resumed run averages on
exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .errors import TrainingError

__all__ = ["StageAverage"]


class StageAverage:
    """EMA copies of `modules` with `decay`; `update()` after every optimiser step."""

    def __init__(self, modules: Sequence[nn.Module], decay: float) -> None:
        self.modules = list(modules)
        self.averages = [
            AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) for m in self.modules
        ]

    def update(self) -> None:
        for average, module in zip(self.averages, self.modules, strict=True):
            average.update_parameters(module)

    def state(self) -> dict[str, torch.Tensor]:
        """The averages as checkpoint tensors `ema/<module index>/<name>` (with `n_averaged`)."""
        return {f"ema/{i}/{k}": v for i, a in enumerate(self.averages) for k, v in a.state_dict().items()}

    def load(self, tensors: dict[str, torch.Tensor], *, source: str) -> None:
        """Restore averages written by `state`; a missing, extra or misshapen tensor is a damaged run."""
        expected = self.state()
        if set(tensors) != set(expected):
            missing = sorted(set(expected) - set(tensors))[:1] or sorted(set(tensors) - set(expected))[:1]
            raise TrainingError(
                f"{source}: the weight average (train.<stage>.ema) does not fit this run (first differing "
                f"tensor: {missing[0]}); resume with the options the run started with, or train again"
            )
        for key, value in tensors.items():
            if value.shape != expected[key].shape:
                raise TrainingError(
                    f"{source}: weight-average tensor {key} has shape {tuple(value.shape)}, "
                    f"expected {tuple(expected[key].shape)}; the checkpoint is damaged"
                )
        for i, average in enumerate(self.averages):
            prefix = f"ema/{i}/"
            average.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    def apply(self) -> None:
        """Copy the averaged weights (and buffers) into the trained modules."""
        with torch.no_grad():
            for average, module in zip(self.averages, self.modules, strict=True):
                for target, value in zip(
                    module.state_dict().values(), average.module.state_dict().values(), strict=True
                ):
                    target.copy_(value)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the modules inside the block, the live ones again after it."""
        live = [{k: v.clone() for k, v in m.state_dict().items()} for m in self.modules]
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for module, saved in zip(self.modules, live, strict=True):
                    for target, value in zip(module.state_dict().values(), saved.values(), strict=True):
                        target.copy_(value)
