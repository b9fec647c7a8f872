"""Samplers for flows (fixed-step Runge-Kutta and adaptive dopri5 via torchdiffeq) and maps.

A fixed-step sampler is data: the torchdiffeq method name and its field evaluations per
step. Diffusion samplers (ddpm, ddim) live with the diffusion transport in `ambiseg.diffusion`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchdiffeq import odeint

from .errors import ConfigError
from .interfaces import Field, Sampler
from .registry import samplers

__all__ = ["FixedStepSampler", "Euler", "Heun", "Midpoint", "RK4", "Dopri5", "Direct", "MAX_STEPS"]

MAX_STEPS = 10_000  # steps of a fixed-step sampler; more is a typo (1e9 would run for weeks)


class _FlowSampler(Sampler):
    """Integrates dx/dt = field(x, t, cond) from t0 to t1 with torchdiffeq."""

    integrates = frozenset({"flow"})
    method: ClassVar[str]

    def __init__(self, *, t0: float = 0.0, t1: float = 1.0) -> None:
        if not t0 < t1:
            raise ConfigError(f"{type(self).__name__}: need t0 < t1, got t0={t0}, t1={t1}")
        self.t0, self.t1 = t0, t1

    def _options(self) -> dict[str, Any]:
        return {}

    def _tolerances(self) -> dict[str, Any]:
        return {}

    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        def f(t: Tensor, x: Tensor) -> Tensor:
            return field(x, t.expand(x.shape[0]), cond)

        span = torch.tensor([self.t0, self.t1], device=x0.device, dtype=x0.dtype)
        return odeint(f, x0, span, method=self.method, options=self._options(), **self._tolerances())[-1]


class FixedStepSampler(_FlowSampler):
    """Explicit Runge-Kutta on a uniform grid of `steps` steps."""

    order: ClassVar[int]
    evals_per_step: ClassVar[int]

    def __init__(self, steps: int = 25, *, t0: float = 0.0, t1: float = 1.0) -> None:
        super().__init__(t0=t0, t1=t1)
        if int(steps) < 1:
            raise ConfigError(f"sampler steps must be >= 1, got {steps}")
        if int(steps) > MAX_STEPS:
            raise ConfigError(f"sampler steps must be at most {MAX_STEPS}, got {steps}")
        self.steps = int(steps)

    def _options(self) -> dict[str, Any]:
        def grid(func: Any, y0: Tensor, t: Tensor) -> Tensor:
            return torch.linspace(float(t[0]), float(t[-1]), self.steps + 1, device=t.device, dtype=t.dtype)

        return {"grid_constructor": grid}

    @property
    def nfe(self) -> int:
        return self.steps * self.evals_per_step

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps})"


@samplers.register("euler", order=1)
class Euler(FixedStepSampler):
    method, order, evals_per_step = "euler", 1, 1


@samplers.register("midpoint", order=2)
class Midpoint(FixedStepSampler):
    method, order, evals_per_step = "midpoint", 2, 2


@samplers.register("heun", order=2)
class Heun(FixedStepSampler):
    method, order, evals_per_step = "heun2", 2, 2


@samplers.register("rk4", order=4)
class RK4(FixedStepSampler):
    method, order, evals_per_step = "rk4", 4, 4


@samplers.register("dopri5", order=5)
class Dopri5(_FlowSampler):
    """Adaptive Dormand-Prince 5(4); accuracy set by `rtol`/`atol`, step count by the field."""

    method = "dopri5"

    def __init__(self, rtol: float = 1e-4, atol: float = 1e-4, *, t0: float = 0.0, t1: float = 1.0) -> None:
        super().__init__(t0=t0, t1=t1)
        if rtol <= 0 or atol <= 0:
            raise ConfigError(f"dopri5 needs rtol > 0 and atol > 0, got rtol={rtol}, atol={atol}")
        self.rtol, self.atol = rtol, atol

    def _tolerances(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol}

    def __repr__(self) -> str:
        return f"Dopri5(rtol={self.rtol}, atol={self.atol})"


@samplers.register("direct")
class Direct(Sampler):
    """One call of a map transport: x1 = field(x0, None, cond)."""

    integrates = frozenset({"map"})

    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        return field(x0, None, cond)

    @property
    def nfe(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "Direct()"
