"""Gaussian diffusion over masks: the linear beta schedule, a base class for epsilon-predicting
diffusion transports, and the `ddpm` and `ddim` samplers that integrate them.

Conventions (Ho et al., 2020): steps k = 1..T; x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps
with abar_k = prod_{i<=k} (1 - beta_i) and abar_0 = 1; masks live in [-1, 1] (x_0 = 2 y - 1).
A diffusion transport is called as `field(x_k, k, cond) -> eps` with integer steps `k` [N] and
exposes `schedule`, `start_step` (T, or a truncation step) and `initial_state`, which turns a
prior sample into x_{start_step}. The samplers read these, so the same transport runs
untruncated from noise (CIMD) or truncated from a mask estimate (a truncated diffusion model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .errors import CompatibilityError, ConfigError, closest
from .interfaces import Field, Prior, Sampler, Transport
from .registry import samplers

__all__ = ["linear_betas", "DiffusionSchedule", "DiffusionTransport", "DDPM", "DDIM", "ddim_timesteps", "VARIANCES"]


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
    """Noise schedule from betas [T]; every per-step table is indexed by k = 0..T (k = 0: no noise)."""

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


PREDICTIONS = ("eps", "v")


class DiffusionTransport(Transport):
    """Base of mask diffusion transports: `forward(x_k, k, cond) -> eps` for every sampler.

    Args:
        steps: T, the length of the diffusion chain.
        beta_start, beta_end: ends of the linear beta schedule (at T = 1000; scaled by 1000/T).
        truncation: start step of sampling (and the largest step trained on); None = T, i.e.
            sampling starts from pure noise given by the prior. With a truncation k < T the
            prior gives a mask estimate x0 in [0, 1] and sampling starts at
            x_k = sqrt(abar_k) (2 x0 - 1) + sqrt(1 - abar_k) eps.
        prediction: what the network outputs and its MSE is taken on: "eps" (the noise, DDPM and
            CIMD) or "v" (sqrt(abar) eps - sqrt(1 - abar) x0). Under eps-prediction the loss
            hardly rewards knowing x0 where abar is small (an x0 error e costs e^2 abar / (1 -
            abar)), yet sampling from noise starts there; v weighs x0 errors evenly along the
            chain. `forward` returns eps either way.
    """

    kind = "diffusion"

    def __init__(
        self,
        *,
        steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        truncation: int | None = None,
        prediction: str = "eps",
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(
                f"diffusion prediction '{prediction}'{closest(prediction, PREDICTIONS)}; choose one of: "
                f"{', '.join(PREDICTIONS)}"
            )
        self.prediction = prediction
        self.schedule = DiffusionSchedule(linear_betas(steps, start=beta_start, end=beta_end))
        if truncation is not None and not 1 <= int(truncation) <= self.schedule.steps:
            raise ConfigError(
                f"diffusion truncation must be a step in 1..{self.schedule.steps} (the transport's "
                f"steps), got {truncation}"
            )
        self.truncated = truncation is not None and int(truncation) < self.schedule.steps
        self.start_step = int(truncation) if truncation is not None else self.schedule.steps

    def check_prior(self, prior: Prior) -> None:
        from .methods.noise import NoisePrior

        noise = isinstance(prior, NoisePrior)
        if self.truncated and noise:
            raise CompatibilityError(
                f"a diffusion truncated at step {self.start_step} starts from a mask estimate in "
                "[0, 1] (e.g. prior 'gtr'), not from prior 'noise'; drop transport.truncation"
            )
        if not self.truncated and not noise:
            raise CompatibilityError(
                f"an untruncated diffusion starts from noise x_T: use prior 'noise', or set "
                f"transport.truncation=k to start from a diffused sample of "
                f"{type(prior).__name__}"
            )
        if noise and prior.channels != 1:
            raise CompatibilityError(
                f"the mask diffusion has 1 channel; set prior 'noise' channels=1 (got {prior.channels})"
            )

    def initial_state(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """x_{start_step} from a prior sample: the noise itself, or a diffused mask estimate."""
        if not self.truncated:
            return x0
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.schedule.q_sample(2.0 * x0 - 1.0, self.start_step, noise)

    def target(self, x0: Tensor, noise: Tensor, k: Tensor) -> Tensor:
        """What the network is trained to output for x_k = q_sample(x0, k, noise)."""
        return noise if self.prediction == "eps" else self.schedule.velocity(x0, k, noise)

    def to_eps(self, x: Tensor, k: Tensor, output: Tensor) -> Tensor:
        """The network's `output` at state x_k as the eps that samplers read."""
        return output if self.prediction == "eps" else self.schedule.eps_from_velocity(x, k, output)

    def estimate_x0(self, x: Tensor, k: Tensor, output: Tensor) -> Tensor:
        """The x0 estimate of the network's `output` at state x_k (unclipped)."""
        if self.prediction == "eps":
            return self.schedule.predict_x0(x, k, output)
        return self.schedule.x0_from_velocity(x, k, output)

    def train_steps(self, n: int, device: torch.device) -> Tensor:
        """Training steps [n] drawn uniformly from 1..start_step (the truncated chain only)."""
        return torch.randint(1, self.start_step + 1, (n,), device=device)

    def to_probs(self, x: Tensor) -> Tensor:
        """[-1, 1] mask states [N, 1, H, W] -> probabilities [N, H, W]."""
        return ((x.squeeze(1) + 1.0) / 2.0).clamp(0.0, 1.0)


VARIANCES: dict[str, Callable[[DiffusionSchedule, int], float]] = {
    "small": lambda s, k: s.posterior_variance(k),
    "large": lambda s, k: float(s.betas[k]),
}


class _DiffusionSampler(Sampler):
    """Shared reverse-process pieces: schedule lookup and the (clipped) x0 / eps estimate."""

    integrates: ClassVar[frozenset[str]] = frozenset({"diffusion"})

    def __init__(self, *, clip: bool = True) -> None:
        self.clip = bool(clip)

    @staticmethod
    def _begin(field: Field, x0: Tensor, generator: torch.Generator | None) -> tuple[DiffusionSchedule, int, Tensor]:
        schedule = getattr(field, "schedule", None)
        if not isinstance(schedule, DiffusionSchedule):
            raise CompatibilityError(
                f"diffusion samplers need a diffusion transport with a `schedule`; {type(field).__name__} has none"
            )
        start = int(getattr(field, "start_step", schedule.steps))
        init = getattr(field, "initial_state", None)
        return schedule, start, init(x0, generator=generator) if init is not None else x0

    def _estimate(
        self, field: Field, schedule: DiffusionSchedule, x: Tensor, k: int, cond: Any
    ) -> tuple[Tensor, Tensor]:
        """(x0 estimate, eps) at step k; with `clip`, x0 is clamped to [-1, 1] and eps re-derived from it."""
        eps = field(x, torch.full((x.shape[0],), k, device=x.device, dtype=torch.long), cond)
        x0 = schedule.predict_x0(x, k, eps)
        if self.clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = schedule.predict_eps(x, k, x0)
        return x0, eps


@samplers.register("ddpm")
class DDPM(_DiffusionSampler):
    """Ancestral sampling over every step from the transport's start step (T or its truncation) to 0.

    Args:
        variance: reverse-step variance, "small" (beta~_k, the true posterior's) or "large" (beta_k).
        clip: clamp the x0 estimate to [-1, 1] at every step (as the CIMD/guided-diffusion code does).
    """

    def __init__(self, *, variance: str = "small", clip: bool = True) -> None:
        super().__init__(clip=clip)
        if variance not in VARIANCES:
            raise ConfigError(
                f"ddpm variance '{variance}'{closest(variance, VARIANCES)}; choose one of: {', '.join(VARIANCES)}"
            )
        self.variance = variance

    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        schedule, start, x = self._begin(field, x0, generator)
        for k in range(start, 0, -1):
            x0_hat, _ = self._estimate(field, schedule, x, k, cond)
            x = schedule.posterior_mean(x0_hat, x, k)
            if k > 1:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + VARIANCES[self.variance](schedule, k) ** 0.5 * noise
        return x

    def __repr__(self) -> str:
        return f"DDPM(variance={self.variance!r}, clip={self.clip})"


def ddim_timesteps(start: int, steps: int) -> list[int]:
    """`steps` distinct steps from `start` down to >= 1, evenly spaced (rounded): DDIM's sub-sequence."""
    if not 1 <= steps <= start:
        raise ConfigError(
            f"ddim steps must be in 1..{start} (the transport's start step), got {steps}; lower sampler.steps"
        )
    return torch.linspace(float(start), 1.0, steps, dtype=torch.float64).round().long().tolist()


@samplers.register("ddim")
class DDIM(_DiffusionSampler):
    """DDIM (Song et al., 2021) on K evenly spaced steps; eta = 0 is deterministic, eta = 1 DDPM-like.

    Args:
        steps: K, the number of denoiser evaluations.
        eta: scale of the per-step noise,
            sigma_k = eta sqrt((1 - abar_prev) / (1 - abar_k)) sqrt(1 - abar_k / abar_prev).
        clip: clamp the x0 estimate to [-1, 1] at every step.
    """

    def __init__(self, steps: int = 50, *, eta: float = 0.0, clip: bool = True) -> None:
        super().__init__(clip=clip)
        if int(steps) < 1 or float(eta) < 0:
            raise ConfigError(f"ddim needs steps >= 1 and eta >= 0, got steps={steps}, eta={eta}")
        self.steps, self.eta = int(steps), float(eta)

    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        schedule, start, x = self._begin(field, x0, generator)
        taus = ddim_timesteps(start, self.steps)
        for k, prev in zip(taus, [*taus[1:], 0], strict=True):
            x0_hat, eps = self._estimate(field, schedule, x, k, cond)
            a, a_prev = float(schedule.alpha_bar[k]), float(schedule.alpha_bar[prev])
            sigma = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
            x = a_prev**0.5 * x0_hat + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x

    @property
    def nfe(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return f"DDIM(steps={self.steps}, eta={self.eta}, clip={self.clip})"
