"""Probability paths of flow transports: the state x_t between a source x0 and a mask x1 at time
t in [0, 1], and the velocity u_t = d x_t / d t it moves with.

A flow transport trains its field on a path (regress v(x_t, t) on u_t) and a flow sampler
integrates the field over the path's time span, so changing the path changes both without
touching the transport. Following the split of Meta's `flow_matching` library into a path and
its scheduler, an affine path x_t = alpha_t x1 + sigma_t x0 is defined by its four coefficients
alone (`AffinePath.coefficients`); `straight` and `cosine` are two such paths.

Truncation (option `truncation`, the start time t0 in [0, 1)): the flow lives on [t0, 1] only.
Training draws t in [t0, 1] with N(0, I) noise as the source x0, and sampling starts at t0 from
x_{t0} = alpha_{t0} m + sigma_{t0} eps, where m is a prior sample read as a mask estimate and
eps is fresh noise: the flow counterpart of a truncated diffusion (Zheng et al., ICLR 2023).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod

from torch import Tensor

from .errors import ConfigError
from .registry import paths

__all__ = ["PathSample", "ProbPath", "AffinePath", "StraightPath", "CosinePath"]


@dataclasses.dataclass(frozen=True)
class PathSample:
    """A point on a path: the state `x_t` and its velocity `u_t` = d x_t / d t, both [N, ...]."""

    x_t: Tensor
    u_t: Tensor


def _column(t: Tensor, like: Tensor) -> Tensor:
    """Times `t` [N] as [N, 1, ..., 1], broadcastable against `like` [N, ...]."""
    return t.view(-1, *([1] * (like.ndim - 1)))


class ProbPath(ABC):
    """A probability path: a family of curves from a source x0 (t = 0) to a mask x1 (t = 1).

    Args:
        truncation: the start time t0 of the flow, in [0, 1); 0 starts from the prior sample itself,
            t0 > 0 from a noised prior sample at t0 (see the module docstring).
    """

    def __init__(self, *, truncation: float = 0.0) -> None:
        t0 = float(truncation)
        if not 0.0 <= t0 < 1.0:
            raise ConfigError(f"path option 'truncation' is the flow's start time t0, in [0, 1); got {truncation!r}")
        self.truncation = t0

    @property
    def truncated(self) -> bool:
        """True when the flow starts at t0 > 0 from a noised mask estimate."""
        return self.truncation > 0.0

    @property
    def span(self) -> tuple[float, float]:
        """The times (t0, t1) a sampler integrates between."""
        return self.truncation, 1.0

    def times(self, uniform: Tensor) -> Tensor:
        """Training times [N] in [t0, 1) from uniform draws [N] in [0, 1) (unchanged when untruncated)."""
        return self.truncation + (1.0 - self.truncation) * uniform if self.truncated else uniform

    @abstractmethod
    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """x_t and u_t [N, ...] between sources `x0` [N, ...] and masks `x1` [N, ...] at times `t` [N]."""

    @abstractmethod
    def estimate_x1(self, x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """The mask x1 [N, ...] that a `velocity` [N, ...] at state `x_t` [N, ...] and times `t` [N] points to."""

    def start(self, estimate: Tensor, noise: Tensor) -> Tensor:
        """The truncated flow's initial state x_{t0} [N, ...]: a mask `estimate` noised by `noise` [N, ...]."""
        return self.sample(noise, estimate, estimate.new_full((estimate.shape[0],), self.truncation)).x_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(truncation={self.truncation})"


class AffinePath(ProbPath):
    """x_t = alpha_t x1 + sigma_t x0 and u_t = alpha'_t x1 + sigma'_t x0; subclasses give the coefficients."""

    @abstractmethod
    def coefficients(self, t: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor | float]:
        """(alpha_t, sigma_t, d alpha_t / dt, d sigma_t / dt) at times `t` (any shape; results broadcast with it)."""

    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        alpha, sigma, d_alpha, d_sigma = self.coefficients(_column(t, x1))
        return PathSample(x_t=alpha * x1 + sigma * x0, u_t=d_alpha * x1 + d_sigma * x0)

    def estimate_x1(self, x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """x1 = (sigma v - sigma' x_t) / (sigma alpha' - sigma' alpha), eliminating x0 from x_t and v."""
        alpha, sigma, d_alpha, d_sigma = self.coefficients(_column(t, x_t))
        return (sigma * velocity - d_sigma * x_t) / (sigma * d_alpha - d_sigma * alpha)


@paths.register("straight", aliases=("ot",))
class StraightPath(AffinePath):
    """The optimal-transport path of ATFM: x_t = t x1 + (1 - t) x0, u_t = x1 - x0."""

    def coefficients(self, t: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor | float]:
        return t, 1 - t, 1.0, -1.0

    def estimate_x1(self, x_t: Tensor, velocity: Tensor, t: Tensor) -> Tensor:
        """x1 = x_t + (1 - t) v: the one-step Euler estimate (the general formula's denominator is 1)."""
        return x_t + velocity * (1 - _column(t, x_t))


@paths.register("cosine", aliases=("vp",))
class CosinePath(AffinePath):
    """The variance-preserving trigonometric path: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2).

    alpha_t^2 + sigma_t^2 = 1, so a unit-variance source and target keep unit variance along the
    path; it is the cosine scheduler of `flow_matching` (and of Nichol & Dhariwal's schedule, up
    to the offset s).
    """

    def coefficients(self, t: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float, Tensor | float]:
        angle = (math.pi / 2) * t
        return angle.sin(), angle.cos(), (math.pi / 2) * angle.cos(), -(math.pi / 2) * angle.sin()
