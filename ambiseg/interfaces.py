"""The three roles every method is made of.

A `Prior` draws initial states conditioned on the image, a `Transport` carries a state to a
segmentation (a one-shot map, a flow velocity field, or a diffusion denoiser), and a
`Sampler` integrates the transport. Image-only work lives in `condition` so a method runs it
once per image and reuses it for every sample. A `LatentPrior` is the prior of a conditional
VAE: its decoder (a transport) trains on its posterior draws through this interface alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "Prior",
    "LatentPrior",
    "LatentDraw",
    "Transport",
    "Sampler",
    "Field",
    "repeat_cond",
    "TRANSPORT_KINDS",
    "STATE_KINDS",
]

TRANSPORT_KINDS = ("map", "flow", "diffusion", "categorical")
# What a prior's samples are, declared by the prior (`Prior.draws`) and matched against what a
# transport carries (`Transport.accepts`) when a method is composed:
STATE_KINDS = {
    "noise": "standard normal states shaped like a mask [.., C, H, W]",
    "mask": "foreground probabilities in [0, 1] shaped like a mask [.., 1, H, W]",
    "latent": "a latent code decoded by a likelihood network (a LatentPrior, with a posterior for training)",
    "logits": "real-valued class logits [.., K, H, W] drawn around an image-conditioned mean (Flow-SSN's base)",
    "none": "no randomness: every sample starts from the same state",
}

Field = Any  # a callable (x [N, ...], t [N] or None, cond) -> Tensor [N, ...]


def map_tensors(fn: Callable[[Tensor], Tensor], cond: Any) -> Any:
    """`fn` applied to every tensor in `cond` (a tensor, or tuples/lists/dicts of them, nested);
    anything else (None, sizes) passes unchanged."""
    if isinstance(cond, Tensor):
        return fn(cond)
    if isinstance(cond, (tuple, list)):
        return type(cond)(map_tensors(fn, c) for c in cond)
    if isinstance(cond, dict):
        return {k: map_tensors(fn, v) for k, v in cond.items()}
    return cond


def repeat_cond(cond: Any, repeats: int) -> Any:
    """Repeat every per-image entry of `cond` `repeats` times along dim 0 (image-major order)."""
    return map_tensors(lambda t: t.repeat_interleave(repeats, dim=0), cond)


class Prior(nn.Module, ABC):
    """Distribution of initial states given an image.

    `draws` declares what its samples are (a key of `STATE_KINDS`). Subclasses that are
    trained on their own (like GTR) set `trainable_alone = True` and implement `loss`; their
    stage is called "prior".
    """

    trainable_alone: ClassVar[bool] = False
    default_training: ClassVar[dict[str, Any]] = {}
    draws: ClassVar[str] = "noise"  # what `sample` returns: a key of STATE_KINDS

    def condition(self, images: Tensor) -> Any:
        """Image-only work, run once per image. `images`: [B, C, H, W]."""
        return images

    @abstractmethod
    def sample(self, state: Any, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw `num_samples` initial states per image: [B, num_samples, *state_shape]."""

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss of the prior's own stage; a dict with a "loss" key."""
        raise NotImplementedError(f"{type(self).__name__} has no training stage of its own")

    def guide(self, state: Any) -> Tensor | None:
        """A per-image map [B, 1, H, W] that summarises the prior (e.g. GTR's mean probability), for a
        transport that conditions on it; None when the prior has none."""
        return None


@dataclass
class LatentDraw:
    """One posterior draw per image for training a decoder on a `LatentPrior`.

    `z` [B, D] is packed exactly as `LatentPrior.sample` packs one sample (every level
    flattened and concatenated in `latent_shapes` order), so the decoder reads both alike;
    `kl` [B, L] is KL(q || p) per image and latent level, so a decoder may weight levels.
    """

    z: Tensor
    kl: Tensor


class LatentPrior(Prior):
    """Prior of a conditional VAE: p(z | image), with a posterior q(z | image, mask) for training.

    A decoder transport (`fcomb`, `phiseg-likelihood`) trains and checks its prior through
    these methods only, so any latent prior of a fitting shape feeds it. `sample` returns z
    packed like `LatentDraw.z`: [B, num_samples, D] with D = sum of the level sizes.
    """

    draws = "latent"

    @abstractmethod
    def posterior_draw(self, images: Tensor, mask: Tensor) -> LatentDraw:
        """A reparameterised z ~ q(z | image, mask) and its KL to the prior, for `mask` [B, 1, H, W].

        With hierarchical latents the prior of a level may condition on the posterior's
        samples of coarser levels; the KL is then taken against that prior.
        """

    @abstractmethod
    def latent_shapes(self, size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        """Shape of each latent level for images of `size` (H, W), in packing order: e.g.
        ((6,),) for one global vector, ((C, H/4, W/4), (C, H/8, W/8)) for spatial levels.
        Decoders read it when composed to check (and size themselves to) the latent."""


class Transport(nn.Module, ABC):
    """Carries a prior state to a segmentation.

    `kind` declares what it is: "map" (one call), "flow" (a velocity field integrated from
    t=0 to t=1), "diffusion" (a Gaussian denoiser run by a diffusion sampler) or "categorical"
    (a denoiser of a discrete-state diffusion, giving x_0 class probabilities, run by a
    categorical sampler: `ambiseg.categorical`); `accepts` the kinds of
    prior states it carries (`STATE_KINDS`, matched with `Prior.draws`). `joint = True` means
    it trains together with its prior (cVAEs) in one stage called "joint".
    """

    kind: ClassVar[str] = "map"
    joint: ClassVar[bool] = False
    default_training: ClassVar[dict[str, Any]] = {}

    @property
    def accepts(self) -> frozenset[str]:
        """The STATE_KINDS of prior samples this transport carries; compose refuses any other.

        Every transport declares it (`accepts = frozenset({"noise"})` on the class, or a property
        when it depends on the options): none is assumed, so a prior whose samples the transport
        cannot start from is refused when the method is built, not with a shape error when sampling.
        """
        return frozenset()

    def condition(self, images: Tensor) -> Any:
        """Image-only work, run once per image. `images`: [B, C, H, W]."""
        return images

    def with_prior(self, cond: Any, prior: Prior, state: Any) -> Any:
        """Per-image conditioning `cond` joined with what it reads of the prior `state` (nothing by default)."""
        return cond

    def expand(self, cond: Any, repeats: int, *, generator: torch.Generator | None = None) -> Any:
        """Per-sample conditioning from per-image `cond` (image-major); override to add randomness."""
        return repeat_cond(cond, repeats)

    def check_prior(self, prior: Prior) -> None:
        """Raise `CompatibilityError` when `prior` cannot feed this transport.

        Called when a method is composed; a transport whose sizes follow its prior (a decoder
        of a `LatentPrior`) may build the layers they size here.
        """

    def initial_state(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The sampler's starting state [N, ...] from prior samples `x0` [N, ...]: `x0` itself by default.

        A truncated flow or diffusion starts from a noised mask estimate instead.
        """
        return x0

    def sampler_options(self) -> dict[str, Any]:
        """Keyword arguments handed to the sampler with every call on this transport, so that
        sampling follows the transport: a flow's time span `t0`, `t1`; a diffusion's noise
        `schedule` and `start` step. None by default."""
        return {}

    @abstractmethod
    def forward(self, x: Tensor, t: Tensor | None, cond: Any) -> Tensor:
        """Velocity (flow), noise estimate (diffusion) or output (map) at states `x` [N, ...]."""

    def to_probs(self, x: Tensor) -> Tensor:
        """Final state [N, 1, H, W] -> foreground probabilities [N, H, W] in [0, 1]."""
        return x.squeeze(1).clamp(0.0, 1.0)

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """Loss of the transport's stage (or the joint stage); a dict with a "loss" key."""
        raise NotImplementedError(f"{type(self).__name__} has no training loss")


class Sampler(ABC):
    """Integrates a transport field from initial states to final states."""

    integrates: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def __call__(
        self, field: Field, x0: Tensor, cond: Any = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        """Final states [N, ...] from initial states `x0` [N, ...] under `field(x, t, cond)`.

        `options` are the transport's `sampler_options()` (a `Method` passes them): a sampler
        reads those of the kinds it integrates and refuses others.
        """

    @property
    def nfe(self) -> int | None:
        """Field evaluations per sample when fixed (None for adaptive samplers)."""
        return None

    @property
    def stochastic(self) -> bool:
        """True when the sampler draws random numbers itself (e.g. DDPM's per-step noise): a
        `Method` then runs it per image with that image's generator instead of across images."""
        return False
