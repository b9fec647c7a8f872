"""Gaussian diffusion over masks: a base class for epsilon-predicting diffusion transports, and
the `ddpm` and `ddim` samplers that integrate them (the noise schedules are in
`ambiseg.noise_schedules`).

Conventions (Ho et al., 2020): steps k = 1..T; x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps
with abar_k = prod_{i<=k} (1 - beta_i) and abar_0 = 1; masks live in [-1, 1] (x_0 = 2 y - 1).
A diffusion transport is called as `field(x_k, k, cond) -> eps` with integer steps `k` [N]. Its
`initial_state` turns a prior sample into x_{start step}, and its `sampler_options()` hand the
samplers its noise `schedule` and `start` step (T, or a truncation step), so the same transport
runs untruncated from noise (CIMD) or truncated from a mask estimate (a truncated diffusion).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .errors import CompatibilityError, ConfigError, closest
from .interfaces import Field, Prior, Sampler, Transport
from .noise_schedules import DiffusionSchedule, linear_betas
from .registry import noise_schedules, samplers
from .samplers import handed_over

__all__ = [
    "linear_betas",
    "DiffusionSchedule",
    "DiffusionTransport",
    "ReverseStep",
    "DDPM",
    "DDIM",
    "ddim_timesteps",
    "VARIANCES",
]


PREDICTIONS = ("eps", "v")


def _make_schedule(
    spec: str | dict[str, Any], steps: int, *, beta_start: float | None, beta_end: float | None
) -> DiffusionSchedule:
    """The schedule `spec` over `steps` steps; `beta_start`/`beta_end` (the transport's shorthand) go to linear."""
    linear = {k: v for k, v in (("beta_start", beta_start), ("beta_end", beta_end)) if v is not None}
    name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else None
    if linear and isinstance(name, str) and noise_schedules.canonical(name) != "linear":
        raise ConfigError(
            f"diffusion options {', '.join(linear)} belong to the linear schedule, not to '{name}'; "
            f"drop them or use schedule='linear'"
        )
    schedule = noise_schedules.from_spec(spec, where="diffusion option 'schedule'", steps=steps, **linear)
    if not isinstance(schedule, DiffusionSchedule):
        raise ConfigError(f"noise schedule '{name}' must build a DiffusionSchedule, got {type(schedule).__name__}")
    return schedule


class DiffusionTransport(Transport):
    """Base of mask diffusion transports: `forward(x_k, k, cond) -> eps` for every sampler.

    Args:
        steps: T, the length of the diffusion chain.
        schedule: the noise schedule, a name of the `noise_schedules` registry or
            `{"name": ..., **options}`: "linear" (default, CIMD's) or "cosine"; its chain length
            is `steps`.
        beta_start, beta_end: shorthand for the linear schedule's options (at T = 1000, scaled by
            1000/T; None: 1e-4 and 0.02); refused with another schedule.
        truncation: start step of sampling (and the largest step trained on); None = T, i.e.
            sampling starts from pure noise given by the prior. With a truncation k < T the
            prior gives a mask estimate x0 in [0, 1] and sampling starts at
            x_k = sqrt(abar_k) (2 x0 - 1) + sqrt(1 - abar_k) eps. It is an option of the
            transport, not of the schedule: the schedule is the forward noising process, the same
            whatever step sampling starts from, while the truncation decides what this transport
            trains on (steps 1..k), which prior it accepts (a mask estimate, not noise) and where
            its sampler starts - the transport's contract with its prior and sampler.
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
        schedule: str | dict[str, Any] = "linear",
        beta_start: float | None = None,
        beta_end: float | None = None,
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
        self.schedule: DiffusionSchedule = _make_schedule(schedule, steps, beta_start=beta_start, beta_end=beta_end)
        if truncation is not None and not 1 <= int(truncation) <= self.schedule.steps:
            raise ConfigError(
                f"diffusion truncation must be a step in 1..{self.schedule.steps} (the transport's "
                f"steps), got {truncation}"
            )
        self.truncated = truncation is not None and int(truncation) < self.schedule.steps
        self.start_step = int(truncation) if truncation is not None else self.schedule.steps

    @property
    def accepts(self) -> frozenset[str]:
        """Noise x_T, or (truncated) a mask estimate in [0, 1] that is diffused to the start step."""
        return frozenset({"mask"}) if self.truncated else frozenset({"noise"})

    def check_prior(self, prior: Prior) -> None:
        """`accepts` with a hint on the truncation that would fit, and one channel."""
        if prior.draws not in self.accepts and self.truncated:
            raise CompatibilityError(
                f"a diffusion truncated at step {self.start_step} starts from a mask estimate in "
                f"[0, 1] (e.g. prior 'gtr'), not from {prior.draws} states of {type(prior).__name__}; "
                "drop transport.truncation"
            )
        if prior.draws not in self.accepts:
            raise CompatibilityError(
                f"an untruncated diffusion starts from noise x_T: use prior 'noise', or set "
                f"transport.truncation=k to start from a diffused sample of "
                f"{type(prior).__name__}"
            )
        channels = getattr(prior, "channels", 1)
        if channels != 1:
            raise CompatibilityError(
                f"the mask diffusion has 1 channel; prior {type(prior).__name__} draws {channels} (set channels=1)"
            )

    def initial_state(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """x_{start_step} from a prior sample: the noise itself, or a diffused mask estimate."""
        if not self.truncated:
            return x0
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.schedule.q_sample(2.0 * x0 - 1.0, self.start_step, noise)

    def sampler_options(self) -> dict[str, Any]:
        """The noise `schedule` and the `start` step, for the diffusion samplers."""
        return {"schedule": self.schedule, "start": self.start_step}

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


@dataclasses.dataclass(frozen=True)
class ReverseStep:
    """One step of the reverse process, from step `k` down to step `prev`: the state `x` = x_k
    [N, ...] and the (clipped) estimates `x0` and `eps` [N, ...] the denoiser gives there."""

    k: int
    prev: int
    x: Tensor
    x0: Tensor
    eps: Tensor


class _DiffusionSampler(Sampler):
    """The reverse process shared by the diffusion samplers: the schedule and start step the transport
    hands over, the (clipped) x0 / eps estimate at each step; a sampler gives its `timesteps` and its
    `step`."""

    integrates: ClassVar[frozenset[str]] = frozenset({"diffusion"})

    def __init__(self, *, clip: bool = True) -> None:
        self.clip = bool(clip)

    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """x_0 [N, ...] from the state `x0` [N, ...] at step `start` (default T) of the noise schedule
        `schedule`, the options a diffusion transport hands over in `sampler_options()`."""
        schedule, start = handed_over(self, options, "schedule", DiffusionSchedule, "noise schedule")
        taus = self.timesteps(schedule.steps if start is None else start)
        x = x0
        for k, prev in zip(taus, [*taus[1:], 0], strict=True):
            x0_hat, eps = self._estimate(field, schedule, x, k, cond)
            x = self.step(schedule, ReverseStep(k, prev, x, x0_hat, eps), generator)
        return x

    @abstractmethod
    def timesteps(self, start: int) -> list[int]:
        """The steps the reverse process visits, descending from `start` to >= 1 (then it lands on 0)."""

    @abstractmethod
    def step(self, schedule: DiffusionSchedule, now: ReverseStep, generator: torch.Generator | None) -> Tensor:
        """The state at step `now.prev` [N, ...] from the state and estimates at step `now.k`."""

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

    def timesteps(self, start: int) -> list[int]:
        return list(range(start, 0, -1))

    def step(self, schedule: DiffusionSchedule, now: ReverseStep, generator: torch.Generator | None) -> Tensor:
        x = schedule.posterior_mean(now.x0, now.x, now.k)
        if now.k > 1:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + VARIANCES[self.variance](schedule, now.k) ** 0.5 * noise
        return x

    @property
    def stochastic(self) -> bool:
        return True

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

    def timesteps(self, start: int) -> list[int]:
        return ddim_timesteps(start, self.steps)

    def step(self, schedule: DiffusionSchedule, now: ReverseStep, generator: torch.Generator | None) -> Tensor:
        a, a_prev = float(schedule.alpha_bar[now.k]), float(schedule.alpha_bar[now.prev])
        sigma = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * now.x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * now.eps
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x

    @property
    def nfe(self) -> int:
        return self.steps

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def __repr__(self) -> str:
        return f"DDIM(steps={self.steps}, eta={self.eta}, clip={self.clip})"
