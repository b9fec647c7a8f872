"""Noise schedules of mask diffusion: beta_1..beta_T and the tables derived from them.

A schedule is the forward (noising) process of a diffusion transport, a component of its own
(registry `noise_schedules`): the transport builds it from its `schedule` option and hands it to
the `ddpm`/`ddim` samplers in `sampler_options()`, so swapping the schedule changes training and
sampling together. `linear` is Ho et al.'s with improved-diffusion's 1000/T scaling (CIMD's);
`cosine` is Nichol & Dhariwal's (2021). A new schedule is a subclass that passes its betas to
`DiffusionSchedule`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import ConfigError
from .registry import noise_schedules

__all__ = [
    "DiffusionSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "linear_betas",
    "cosine_betas",
    "MAX_DIFFUSION_STEPS",
]


MAX_DIFFUSION_STEPS = 100_000  # T; the schedule tensors have T entries and DDPM takes T steps


def linear_betas(steps: int, *, start: float = 1e-4, end: float = 0.02) -> Tensor:
    """Linear betas [steps] (float64) from `start` to `end`, scaled by 1000 / steps.

    At T = 1000 these are Ho et al.'s values; the 1000/T scale (improved-diffusion, which the
    CIMD code builds on) keeps abar at a given fraction of the chain similar for any T.
    """
    steps = int(steps)
    if steps > MAX_DIFFUSION_STEPS:
        raise ConfigError(f"diffusion steps must be at most {MAX_DIFFUSION_STEPS}, got {steps}")
    scale = 1000.0 / max(steps, 1)
    if steps < 1 or not 0.0 < start * scale <= end * scale < 1.0:
        raise ConfigError(
            f"linear beta schedule needs steps >= 1 and 0 < start <= end with end * 1000 / steps < 1, "
            f"got steps={steps}, start={start}, end={end}; use more steps or a smaller end"
        )
    return torch.linspace(start * scale, end * scale, steps, dtype=torch.float64)


class DiffusionSchedule:
    """Noise schedule from betas [T]; every per-step table is indexed by k = 0..T (k = 0: no noise).

    Attributes:
        steps: T.
        betas: [T + 1] float64, betas[0] = 0.
        alpha_bar: [T + 1] float64, prod_{i <= k} (1 - beta_i); alpha_bar[0] = 1.
    """

    def __init__(self, betas: Tensor) -> None:
        betas = betas.to(torch.float64)
        self.steps = int(betas.numel())
        self.betas = torch.cat([betas.new_zeros(1), betas])
        self.alpha_bar = torch.cumprod(1.0 - self.betas, dim=0)

    @staticmethod
    def _at(table: Tensor, k: Tensor | int, like: Tensor) -> Tensor:
        """table[k] as [N, 1, ..., 1] in the dtype/device of `like` ([N, ...])."""
        k = torch.as_tensor(k, device=table.device).long().expand(like.shape[0])
        return table[k].to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: Tensor, k: Tensor | int, noise: Tensor) -> Tensor:
        """x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) noise."""
        a = self._at(self.alpha_bar, k, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def predict_x0(self, x: Tensor, k: Tensor | int, eps: Tensor) -> Tensor:
        """x0 estimate (x_k - sqrt(1 - abar_k) eps) / sqrt(abar_k)."""
        a = self._at(self.alpha_bar, k, x)
        return (x - (1.0 - a).sqrt() * eps) / a.sqrt()

    def predict_eps(self, x: Tensor, k: Tensor | int, x0: Tensor) -> Tensor:
        """The eps that maps x0 to x_k: (x_k - sqrt(abar_k) x0) / sqrt(1 - abar_k)."""
        a = self._at(self.alpha_bar, k, x)
        return (x - a.sqrt() * x0) / (1.0 - a).sqrt()

    def velocity(self, x0: Tensor, k: Tensor | int, noise: Tensor) -> Tensor:
        """v = sqrt(abar_k) noise - sqrt(1 - abar_k) x0 (Salimans & Ho, 2022), the v-prediction target."""
        a = self._at(self.alpha_bar, k, x0)
        return a.sqrt() * noise - (1.0 - a).sqrt() * x0

    def eps_from_velocity(self, x: Tensor, k: Tensor | int, v: Tensor) -> Tensor:
        """The eps of state x_k given its v: sqrt(1 - abar_k) x_k + sqrt(abar_k) v."""
        a = self._at(self.alpha_bar, k, x)
        return (1.0 - a).sqrt() * x + a.sqrt() * v

    def x0_from_velocity(self, x: Tensor, k: Tensor | int, v: Tensor) -> Tensor:
        """The x0 of state x_k given its v: sqrt(abar_k) x_k - sqrt(1 - abar_k) v."""
        a = self._at(self.alpha_bar, k, x)
        return a.sqrt() * x - (1.0 - a).sqrt() * v

    def posterior_mean(self, x0: Tensor, x: Tensor, k: int) -> Tensor:
        """Mean of q(x_{k-1} | x_k, x0) for k >= 1."""
        beta, a, a_prev = self.betas[k], self.alpha_bar[k], self.alpha_bar[k - 1]
        c0 = float(beta * a_prev.sqrt() / (1.0 - a))
        ck = float((1.0 - a_prev) * (1.0 - beta).sqrt() / (1.0 - a))
        return c0 * x0 + ck * x

    def posterior_variance(self, k: int) -> float:
        """beta~_k = beta_k (1 - abar_{k-1}) / (1 - abar_k), the variance of q(x_{k-1} | x_k, x0)."""
        return float(self.betas[k] * (1.0 - self.alpha_bar[k - 1]) / (1.0 - self.alpha_bar[k]))


def _check_steps(steps: int) -> int:
    steps = int(steps)
    if not 1 <= steps <= MAX_DIFFUSION_STEPS:
        raise ConfigError(f"diffusion steps must be in 1..{MAX_DIFFUSION_STEPS}, got {steps}")
    return steps


def cosine_betas(steps: int, *, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Betas [steps] (float64) of the cosine schedule (Nichol & Dhariwal, 2021, eq. 17).

    abar(t) = f(t) / f(0) with f(t) = cos^2(pi / 2 (t / T + s) / (1 + s)), s = `offset`, and
    beta_t = 1 - abar(t) / abar(t - 1), clipped at `max_beta` so the last steps stay invertible.
    """
    steps = _check_steps(steps)
    if not offset >= 0 or not 0.0 < max_beta < 1.0:
        raise ConfigError(
            f"cosine noise schedule needs offset >= 0 and 0 < max_beta < 1, got offset={offset}, max_beta={max_beta}"
        )
    k = torch.arange(steps + 1, dtype=torch.float64)
    f = torch.cos((k / steps + offset) / (1 + offset) * (math.pi / 2)) ** 2
    alpha_bar = f / f[0]
    return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(min=0.0, max=max_beta)


@noise_schedules.register("linear")
class LinearSchedule(DiffusionSchedule):
    """Linear betas from `beta_start` to `beta_end` (Ho et al., 2020), scaled by 1000 / T.

    Args:
        steps: T, the chain length (set by the transport's `steps`).
        beta_start, beta_end: the ends at T = 1000.
    """

    def __init__(self, steps: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__(linear_betas(steps, start=beta_start, end=beta_end))


@noise_schedules.register("cosine")
class CosineSchedule(DiffusionSchedule):
    """abar_k = cos^2-shaped (Nichol & Dhariwal, 2021): noise is added more slowly at both ends than
    by the linear schedule, so fewer steps are spent on nearly pure noise.

    Args:
        steps: T, the chain length (set by the transport's `steps`).
        offset: s, which keeps beta_1 from vanishing (0.008 in the paper).
        max_beta: upper clip of the betas (0.999 in the paper).
    """

    def __init__(self, steps: int = 1000, *, offset: float = 0.008, max_beta: float = 0.999) -> None:
        super().__init__(cosine_betas(steps, offset=offset, max_beta=max_beta))
