"""Samplers for flows (fixed-step Runge-Kutta and adaptive dopri5 via torchdiffeq) and maps.

A fixed-step sampler is data: the torchdiffeq method name and its field evaluations per
step. Diffusion samplers (ddpm, ddim) live with the diffusion transport in `ambiseg.diffusion`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torchdiffeq import odeint

from .errors import CompatibilityError, ConfigError
from .interfaces import Field, Sampler
from .registry import samplers

__all__ = [
    "FixedStepSampler",
    "Euler",
    "Heun",
    "Midpoint",
    "RK4",
    "Dopri5",
    "Direct",
    "MAX_STEPS",
    "refuse_unknown_options",
]

MAX_STEPS = 10_000  # steps of a fixed-step sampler; more is a typo (1e9 would run for weeks)


def refuse_unknown_options(sampler: Sampler, options: dict[str, Any]) -> None:
    """A one-line `CompatibilityError` when a transport hands `sampler` options it does not read."""
    if options:
        raise CompatibilityError(
            f"sampler {type(sampler).__name__} does not read the transport's option(s) {', '.join(sorted(options))}; "
            f"use a sampler made for this transport"
        )


def handed_over(sampler: Sampler, options: dict[str, Any], key: str, kind: type, what: str) -> tuple[Any, int | None]:
    """The `key` object (of type `kind`) and the `start` step a transport hands a chain sampler in
    `sampler_options()`; any other option, or a missing `key`, is refused in one line."""
    value, start = options.pop(key, None), options.pop("start", None)
    refuse_unknown_options(sampler, options)
    if not isinstance(value, kind):
        raise CompatibilityError(
            f"{type(sampler).__name__} needs the transport's {what}: sample through a Method, or pass the "
            f"transport's sampler_options() ({key}=, start=); got {key}={value!r}"
        )
    return value, None if start is None else int(start)


class _FlowSampler(Sampler):
    """Integrates dx/dt = field(x, t, cond) from t0 to t1 with torchdiffeq.

    The time span is the transport's (its path's `span`, handed over as the options `t0`, `t1`),
    else 0 to 1; a `t0` or `t1` set on the sampler overrides it.
    """

    integrates = frozenset({"flow"})
    method: ClassVar[str]

    def __init__(self, *, t0: float | None = None, t1: float | None = None) -> None:
        if t0 is not None and t1 is not None and not t0 < t1:
            raise ConfigError(f"{type(self).__name__}: need t0 < t1, got t0={t0}, t1={t1}")
        self.t0, self.t1 = t0, t1

    def span(self, t0: float | None = None, t1: float | None = None) -> tuple[float, float]:
        """(start, end) of the integration: the sampler's own t0/t1, else the given ones, else (0, 1)."""
        start = self.t0 if self.t0 is not None else (0.0 if t0 is None else float(t0))
        end = self.t1 if self.t1 is not None else (1.0 if t1 is None else float(t1))
        if not start < end:
            raise ConfigError(f"{type(self).__name__}: need t0 < t1, got t0={start}, t1={end}")
        return start, end

    def _options(self) -> dict[str, Any]:
        return {}

    def _tolerances(self) -> dict[str, Any]:
        return {}

    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """x at the end of the span [N, ...] from `x0` [N, ...] at its start; the options `t0`, `t1`
        (floats, the transport's span) set the span where the sampler's own do not."""
        t0, t1 = options.pop("t0", None), options.pop("t1", None)
        refuse_unknown_options(self, options)

        def f(t: Tensor, x: Tensor) -> Tensor:
            return field(x, t.expand(x.shape[0]), cond)

        span = torch.tensor(self.span(t0, t1), device=x0.device, dtype=x0.dtype)
        return odeint(f, x0, span, method=self.method, options=self._options(), **self._tolerances())[-1]


class FixedStepSampler(_FlowSampler):
    """Explicit Runge-Kutta on a uniform grid of `steps` steps."""

    order: ClassVar[int]
    evals_per_step: ClassVar[int]

    def __init__(self, steps: int = 25, *, t0: float | None = None, t1: float | None = None) -> None:
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

    def __init__(
        self, rtol: float = 1e-4, atol: float = 1e-4, *, t0: float | None = None, t1: float | None = None
    ) -> None:
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
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        refuse_unknown_options(self, options)
        return field(x0, None, cond)

    @property
    def nfe(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "Direct()"
