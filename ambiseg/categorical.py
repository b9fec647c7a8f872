"""Categorical (discrete-state) diffusion over label maps, and the samplers that run its denoisers.

The forward process of multinomial diffusion (Hoogeboom et al., 2021; D3PM's uniform transitions,
Austin et al., 2021) as CCDM (Zbinden et al., ICCV 2023) and BerDiff (Chen et al., MICCAI 2023)
use it: K classes, steps k = 1..T on the betas of a noise schedule (`ambiseg.noise_schedules`);
a step keeps the class with probability 1 - beta_k and otherwise redraws it uniformly,

    q(x_k | x_{k-1}) = Cat((1 - beta_k) x_{k-1} + beta_k / K),   q(x_k | x_0) = Cat(abar_k x_0 + (1 - abar_k) / K),

with x one-hot and abar_k = prod_{i <= k} (1 - beta_i), so x_T is (nearly) uniform. K = 2 is
BerDiff's Bernoulli diffusion, x_k ~ B((1 - beta_k) x_{k-1} + beta_k / 2) on a binary mask.

States are "state layout" tensors [N, C, ...]: one-hot over C = K classes, except for K = 2,
where only the foreground channel is kept (C = 1, the mask itself, 0/1), so a two-class state is
exactly a mask. A categorical transport is called as `field(x_k, k, cond) -> x0_hat`, the
probabilities of x_0 in state layout, and hands its samplers its `CategoricalProcess` and start
step in `sampler_options()`. Transports of this kind declare `kind = "categorical"`: a Gaussian
sampler (`ddpm`, `ddim`) cannot run them, nor these samplers a Gaussian denoiser.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .diffusion import ddim_timesteps
from .errors import ConfigError, closest
from .interfaces import Field, Sampler
from .noise_schedules import DiffusionSchedule
from .registry import samplers
from .samplers import handed_over

__all__ = ["CategoricalProcess", "REVERSES", "CategoricalAncestral", "CategoricalDDIM"]

# How the reverse step p(x_{k-1} | x_k) is built from the network's x_0 probabilities x0_hat:
REVERSES = {
    "mixture": "sum_c x0_hat_c q(x_{k-1} | x_k, x_0 = c): the posterior averaged over x_0 (CCDM's theta_post_prob)",
    "plugin": "q(x_{k-1} | x_k, x_0 = x0_hat): x0_hat put into the posterior (BerDiff, Hoogeboom et al., D3PM)",
}
_TINY = 1e-12  # floor of probabilities under a log (CCDM's clamp)

Step = Tensor | int


class CategoricalProcess:
    """Uniform-transition categorical diffusion over `classes` classes on the betas of `schedule`.

    Every method takes and returns state-layout tensors [N, C, ...] (see the module docstring);
    steps `k` are ints or [N] tensors of 0..T, and `prev` (default k - 1) is the earlier step a
    posterior or reverse step goes to.

    Args:
        schedule: the noise schedule; its `alpha_bar` [T + 1] (alpha_bar[0] = 1) is all the process reads.
        classes: K >= 2.
        reverse: the reverse parameterisation, a key of `REVERSES`: "mixture" (CCDM) or "plugin" (BerDiff).
    """

    def __init__(self, schedule: DiffusionSchedule, classes: int = 2, *, reverse: str = "mixture") -> None:
        if int(classes) < 2:
            raise ConfigError(f"a categorical diffusion needs classes >= 2 (2 is a binary mask), got {classes}")
        if reverse not in REVERSES:
            raise ConfigError(
                f"categorical reverse '{reverse}'{closest(reverse, REVERSES)}; choose one of: {', '.join(REVERSES)}"
            )
        self.schedule, self.classes, self.reverse = schedule, int(classes), reverse
        self.steps = schedule.steps
        self.alpha_bar = schedule.alpha_bar

    @property
    def channels(self) -> int:
        """C of the state layout: 1 for K = 2 (the foreground mask), else K."""
        return 1 if self.classes == 2 else self.classes

    # ---- layouts -------------------------------------------------------------------------------
    def full(self, x: Tensor) -> Tensor:
        """State layout [N, C, ...] -> class probabilities [N, K, ...] ([1 - x, x] for K = 2)."""
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ConfigError(
                f"a {self.classes}-class categorical state has {self.channels} channel(s) [N, C, ...], "
                f"got shape {tuple(x.shape)}"
            )
        return torch.cat([1.0 - x, x], dim=1) if self.classes == 2 else x

    def compact(self, probs: Tensor) -> Tensor:
        """Class probabilities [N, K, ...] -> state layout (the foreground channel for K = 2)."""
        return probs[:, 1:] if self.classes == 2 else probs

    def one_hot(self, labels: Tensor) -> Tensor:
        """Integer class labels [N, 1, ...] (0 = background) -> one-hot states in state layout."""
        labels = labels.long()
        if self.classes == 2:
            return labels.clamp(0, 1).float()
        return F.one_hot(labels.squeeze(1), self.classes).movedim(-1, 1).float()

    def from_mask(self, mask: Tensor) -> Tensor:
        """A foreground mask [N, 1, ...] (0/1 or probabilities) as x_0 in state layout: the mask itself
        for K = 2, else (1 - mask, mask, 0, ..., 0) over the K classes."""
        if self.classes == 2:
            return mask
        rest = mask.new_zeros(mask.shape[0], self.classes - 2, *mask.shape[2:])
        return torch.cat([1.0 - mask, mask, rest], dim=1)

    def _abar(self, k: Step, like: Tensor) -> Tensor:
        """alpha_bar[k] as [N, 1, ..., 1] in the dtype and device of `like` [N, ...]."""
        k = torch.as_tensor(k).long().cpu().expand(like.shape[0])
        if int(k.min()) < 0 or int(k.max()) > self.steps:
            raise ConfigError(f"categorical diffusion steps must be in 0..{self.steps}, got {k.tolist()}")
        return self.alpha_bar[k].to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def _steps(self, k: Step, prev: Step | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """(keep, abar_prev): the probability that a class survives from `prev` to `k` unredrawn,
        abar_k / abar_prev, and abar_prev, both [N, 1, ...]."""
        prev = torch.as_tensor(k) - 1 if prev is None else prev
        a_prev = self._abar(prev, like)
        return self._abar(k, like) / a_prev, a_prev

    # ---- forward process -------------------------------------------------------------------------
    def marginal(self, x0: Tensor, k: Step) -> Tensor:
        """q(x_k | x_0) = abar_k x_0 + (1 - abar_k) / K (probabilities; `x0` one-hot or soft)."""
        a = self._abar(k, x0)
        return a * x0 + (1.0 - a) / self.classes

    def transition(self, x_prev: Tensor, k: Step, prev: Step | None = None) -> Tensor:
        """q(x_k | x_prev) = keep x_prev + (1 - keep) / K, keep = abar_k / abar_prev (1 - beta_k for one step)."""
        keep, _ = self._steps(k, prev, x_prev)
        return keep * x_prev + (1.0 - keep) / self.classes

    def posterior(self, xk: Tensor, x0: Tensor, k: Step, prev: Step | None = None) -> Tensor:
        """q(x_prev | x_k, x_0) ∝ q(x_k | x_prev) q(x_prev | x_0)
        = normalise[(keep x_k + (1 - keep) / K) * (abar_prev x_0 + (1 - abar_prev) / K)]."""
        keep, a_prev = self._steps(k, prev, xk)
        theta = (keep * self.full(xk) + (1.0 - keep) / self.classes) * (
            a_prev * self.full(x0) + (1.0 - a_prev) / self.classes
        )
        return self.compact(theta / theta.sum(dim=1, keepdim=True).clamp_min(_TINY))

    def reverse_probs(self, xk: Tensor, x0_hat: Tensor, k: Step, prev: Step | None = None) -> Tensor:
        """p(x_prev | x_k) from the x_0 probabilities `x0_hat` by the process's `reverse` rule; at
        prev = 0 it is `x0_hat` itself (both papers' last step)."""
        if self.reverse == "plugin":
            out = self.posterior(xk, x0_hat, k, prev)
        else:  # sum_c p_c q(x_prev | x_k, e_c); with left = keep x_k + (1 - keep)/K (summing to 1),
            # q(x_prev = i | x_k, e_c) = left_i (a_prev [i = c] + (1 - a_prev)/K) / z_c,
            # z_c = a_prev left_c + (1 - a_prev)/K
            keep, a_prev = self._steps(k, prev, xk)
            left = keep * self.full(xk) + (1.0 - keep) / self.classes
            z = a_prev * left + (1.0 - a_prev) / self.classes
            p = self.full(x0_hat) / z
            out = self.compact(left * (a_prev * p + (1.0 - a_prev) / self.classes * p.sum(dim=1, keepdim=True)))
        prev_t = torch.as_tensor(k) - 1 if prev is None else torch.as_tensor(prev)
        last = (prev_t.to(xk.device).expand(xk.shape[0]) == 0).view(-1, *([1] * (xk.ndim - 1)))
        return torch.where(last, x0_hat, out)

    # ---- loss ------------------------------------------------------------------------------------
    def kl(self, x0: Tensor, xk: Tensor, x0_hat: Tensor, k: Step) -> Tensor:
        """KL(q(x_{k-1} | x_k, x_0) || p(x_{k-1} | x_k)) per element [N, ...] (summed over classes), the
        variational bound's term at step k; at k = 1 the posterior is x_0, so it is -log p(x_0 | x_1)."""
        q = self.full(self.posterior(xk, x0, k))
        p = self.full(self.reverse_probs(xk, x0_hat, k))
        return (torch.xlogy(q, q) - q * p.clamp_min(_TINY).log()).sum(dim=1)

    # ---- draws -----------------------------------------------------------------------------------
    def draw(self, probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A one-hot sample (state layout) of the categorical distributions `probs` (state layout)."""
        if self.classes == 2:
            u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
            return (u < probs).to(probs.dtype)
        u = torch.rand(probs[:, :1].shape, generator=generator, device=probs.device, dtype=probs.dtype)
        labels = (probs.cumsum(dim=1) < u).sum(dim=1, keepdim=True).clamp(max=self.classes - 1)
        return self.one_hot(labels).to(probs.dtype)

    def mode(self, probs: Tensor) -> Tensor:
        """The most probable class of `probs` (state layout), one-hot; a tie goes to the lower class."""
        if self.classes == 2:
            return (probs > 0.5).to(probs.dtype)
        return self.one_hot(probs.argmax(dim=1, keepdim=True)).to(probs.dtype)

    def q_sample(self, x0: Tensor, k: Step, generator: torch.Generator | None = None) -> Tensor:
        """x_k ~ q(x_k | x_0)."""
        return self.draw(self.marginal(x0, k), generator)

    def __repr__(self) -> str:
        return f"CategoricalProcess(steps={self.steps}, classes={self.classes}, reverse={self.reverse!r})"


class _CategoricalSampler(Sampler):
    """The reverse chain shared by the categorical samplers: the process and start step the transport
    hands over, x0_hat from the field at each visited step, a draw from the sampler's reverse
    distribution, and at the last step (to 0) the mode of x0_hat (both papers), or a draw."""

    integrates: ClassVar[frozenset[str]] = frozenset({"categorical"})

    def __init__(self, steps: int | None = None, *, sample_last: bool = False) -> None:
        if steps is not None and int(steps) < 1:
            raise ConfigError(f"{type(self).__name__} steps must be >= 1 (None: every step), got {steps}")
        self.steps = None if steps is None else int(steps)
        self.sample_last = bool(sample_last)

    def timesteps(self, start: int) -> list[int]:
        """The steps visited, descending from `start` to >= 1: all of them, or `steps` evenly spaced."""
        return list(range(start, 0, -1)) if self.steps is None else ddim_timesteps(start, self.steps)

    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """x_0 [N, C, ...] from the state `x0` at step `start` (default T) of the `process` (the options
        a categorical transport hands over in `sampler_options()`)."""
        process, start = handed_over(self, options, "process", CategoricalProcess, "categorical process")
        taus = self.timesteps(process.steps if start is None else start)
        x = x0
        for k, prev in zip(taus, [*taus[1:], 0], strict=True):
            x0_hat = field(x, torch.full((x.shape[0],), k, device=x.device, dtype=torch.long), cond)
            if prev == 0 and not self.sample_last:
                x = process.mode(x0_hat)
            else:
                x = process.draw(self.probs(process, x, x0_hat, k, prev), generator)
        return x

    @abstractmethod
    def probs(self, process: CategoricalProcess, x: Tensor, x0_hat: Tensor, k: int, prev: int) -> Tensor:
        """The distribution (state layout) x_prev is drawn from, given x_k = `x` and `x0_hat`."""

    @property
    def nfe(self) -> int | None:
        return self.steps

    @property
    def stochastic(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, sample_last={self.sample_last})"


@samplers.register("categorical")
class CategoricalAncestral(_CategoricalSampler):
    """Ancestral sampling of a categorical diffusion: x_prev ~ p(x_prev | x_k), the transport's reverse
    step (its process's `reverse` rule) from each visited step to the next.

    Args:
        steps: None visits every step from the start step down (CCDM's sampling); K visits K evenly
            spaced steps (rounded, like `ddim`), each jump drawn from the exact posterior
            q(x_prev | x_k, x_0) over the gap.
        sample_last: draw x_0 from x0_hat at the last step instead of taking its most probable class.
    """

    def probs(self, process: CategoricalProcess, x: Tensor, x0_hat: Tensor, k: int, prev: int) -> Tensor:
        return process.reverse_probs(x, x0_hat, k, prev)


@samplers.register("categorical-ddim")
class CategoricalDDIM(_CategoricalSampler):
    """BerDiff's accelerated sampler ("BDDIM") on `steps` evenly spaced steps, for any K:

        p(x_prev | x_k) = Cat(sigma x_k + (abar_prev - sigma abar_k) x0_hat),  sigma = (1 - abar_prev) / (1 - abar_k),

    which keeps the marginal q(x_prev | x_0) when x0_hat = x_0. At prev = 0 it is x0_hat.

    Args:
        steps: K, the number of denoiser evaluations (BerDiff: 10 of T = 1000).
        sample_last: draw x_0 from x0_hat at the last step instead of taking its most probable class.
    """

    def __init__(self, steps: int = 10, *, sample_last: bool = False) -> None:
        super().__init__(steps, sample_last=sample_last)

    def probs(self, process: CategoricalProcess, x: Tensor, x0_hat: Tensor, k: int, prev: int) -> Tensor:
        a, a_prev = float(process.alpha_bar[k]), float(process.alpha_bar[prev])
        sigma = (1.0 - a_prev) / (1.0 - a)
        return sigma * x + (a_prev - sigma * a) * x0_hat
