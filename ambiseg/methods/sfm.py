"""SFM: Segmentation Flow Matching, the second stage of ATFM (Li et al., AAAI 2026).

A velocity field v(x_t, t, image) (the ST-Net, a time-conditioned U-Net) is trained on a
probability path (`ambiseg.paths`; by default ATFM's optimal-transport path
x_t = t x1 + (1 - t) x0) from a prior sample x0 (sigmoid of a frozen GTR sample, or noise for
"SFM alone") to an annotator's mask x1, with the same x0 and t paired with every annotator of
the image. A semantic-consistency term compares the x1 the velocity points to (on the straight
path the one-step estimate x1_hat = x_t + v (1 - t)) to x1 by Dice:
L = MSE(v, u_t) + alpha (1 - Dice(x1_hat, x1)), with u_t the path's velocity (x1 - x0).

Coupling of sources and masks (option `coupling`): "independent" is the paper's (one prior
sample per image, paired with every annotator); "matched" draws one prior sample per annotator
and pairs draws with annotators by the assignment of least total squared distance, a per-image
minibatch optimal-transport coupling (Pooladian et al., ICML 2023; Tong et al., TMLR 2024). Both
keep every annotator's mask as a target, so the flow's marginal is the raters' distribution; under
the matched coupling the draw tells the flow *which* rater's mask to make, so the field points to
one mask instead of the raters' average and a few Euler steps end near a binary mask.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from ..errors import CompatibilityError, ConfigError, closest
from ..interfaces import Prior, Transport
from ..losses import hard_dice, soft_dice, unpack_batch
from ..nets import TimeUNet
from ..paths import ProbPath
from ..registry import paths, transports

__all__ = ["SFMTransport", "SF_LOSSES", "LUMA", "COUPLINGS", "matched_order"]

SF_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"soft": soft_dice, "hard": hard_dice}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for the grayscale option on RGB images
COUPLINGS = ("independent", "matched")
_MAX_MATCHED = 8  # annotators per image the matched coupling enumerates (8! = 40,320 orders)


def matched_order(sources: Tensor, targets: Tensor) -> Tensor:
    """For each image, the order of `targets` that pairs them with `sources` at least total cost.

    Args:
        sources: [B, A, ...] states (e.g. A prior draws per image).
        targets: [B, A, ...] masks (the A annotators of each image).

    Returns:
        [B, A] long: `targets[b, order[b, i]]` is paired with `sources[b, i]`; the cost is the
        squared distance summed over pixels, minimised exactly over all A! orders.
    """
    a = sources.shape[1]
    if a > _MAX_MATCHED:
        raise ConfigError(
            f"transport 'sfm' coupling 'matched' enumerates every pairing of draws and annotators, so it "
            f"takes at most {_MAX_MATCHED} annotators per image; got {a}: use coupling='independent'"
        )
    cost = torch.cdist(sources.flatten(2).float(), targets.flatten(2).float()).square()  # [B, A, A]
    orders = torch.tensor(list(itertools.permutations(range(a))), device=cost.device)  # [P, A]
    rows = torch.arange(a, device=cost.device)
    totals = cost[:, rows, orders].sum(-1)  # [B, P]
    return orders[totals.argmin(dim=1)]


@transports.register("sfm")
class SFMTransport(Transport):
    """Flow-matching velocity field on [1, H, W] mask states, conditioned on the image.

    Args:
        width: base width of the ST-Net (paper: 128 LIDC, 256 ISIC3).
        mults: ST-Net width multipliers per level.
        blocks: ResNet blocks per level.
        alpha: weight of the semantic-consistency term (paper: 1e-3 LIDC, 1e-4 ISIC3; 0 drops it).
        sf_loss: "soft" (differentiable Dice, default) or "hard" (Dice of the thresholded,
            detached estimate, as the public code: it adds no gradient).
        grayscale: feed RGB images to the ST-Net as one luma channel (the public code's choice);
            default keeps every image channel.
        groups: GroupNorm groups of the ST-Net's ResNet blocks (default 8; the public code uses 1).
        stem_kernel: kernel size of the ST-Net's input conv, odd (default 7; the public code uses 1).
        attention: linear attention at every ST-Net level.
        heads, head_dim: attention heads and channels per head (paper setting: 4 x 32).
        time_scale: t in [0, 1] is multiplied by this before the sinusoidal embedding; 1.0
            embeds the raw t as the public code does.
        coupling: how prior draws are paired with annotators in training: "independent" (the
            paper: one draw per image, paired with every annotator) or "matched" (one draw per
            annotator, paired by least squared distance; see the module docstring).
        guide: also condition the ST-Net on the prior's summary map (`Prior.guide`: GTR's mean
            probability sigmoid(mu)) as one more input channel, so the flow need not find the
            lesion in the image again (an ambiseg option; the paper's ST-Net sees the image only).
        path: the probability path, a name of the `paths` registry or `{"name": ..., **options}`:
            "straight" (ATFM's, default), "cosine", ...; `{"name": "straight", "truncation": 0.3}`
            starts the flow at t0 = 0.3 from the noised prior sample (see `ambiseg.paths`).
        in_channels: image channels (filled in from the data by the Method).
    """

    @property
    def accepts(self) -> frozenset[str]:
        """Any one-channel state; a truncated path noises the prior sample as a mask estimate, so a mask."""
        return frozenset({"mask"}) if self.path.truncated else frozenset({"noise", "mask"})

    kind: ClassVar[str] = "flow"
    default_training: ClassVar[dict] = {"optimizer": "adam", "lr": 1e-4}

    def __init__(
        self,
        *,
        width: int = 32,
        mults: tuple[int, ...] = (1, 2, 4),
        blocks: int = 2,
        alpha: float = 1e-3,
        sf_loss: str = "soft",
        grayscale: bool = False,
        groups: int = 8,
        attention: bool = True,
        heads: int = 4,
        head_dim: int = 32,
        time_scale: float = 1000.0,
        stem_kernel: int = 7,
        path: str | dict[str, Any] = "straight",
        coupling: str = "independent",
        guide: bool = False,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if coupling not in COUPLINGS:
            raise ConfigError(
                f"transport 'sfm' option 'coupling' is {coupling!r}{closest(str(coupling), COUPLINGS)}; "
                f"choose one of: {', '.join(COUPLINGS)}"
            )
        self.coupling, self.guide = coupling, bool(guide)
        self.path: ProbPath = paths.from_spec(path, where="transport 'sfm' option 'path'")
        if sf_loss not in SF_LOSSES:
            raise ConfigError(
                f"transport 'sfm' option 'sf_loss' is {sf_loss!r}{closest(str(sf_loss), SF_LOSSES)}; "
                f"choose one of: {', '.join(SF_LOSSES)}"
            )
        if not float(alpha) >= 0:
            raise ConfigError(f"transport 'sfm' option 'alpha' must be >= 0, got {alpha!r}")
        if grayscale and in_channels not in (1, 3):
            raise ConfigError(f"transport 'sfm': grayscale needs 1- or 3-channel images, got in_channels={in_channels}")
        self.alpha, self.sf_loss, self.in_channels = float(alpha), sf_loss, int(in_channels)
        self.grayscale = bool(grayscale) and in_channels == 3
        image_channels = 1 if self.grayscale else self.in_channels
        self.net = TimeUNet(
            image_channels + 1 + int(self.guide),
            1,
            width=width,
            mults=tuple(mults),
            blocks=blocks,
            groups=groups,
            attention=attention,
            heads=heads,
            head_dim=head_dim,
            time_scale=time_scale,
            stem_kernel=stem_kernel,
        )

    def condition(self, images: Tensor) -> Tensor:
        """The conditioning image [B, C', H, W] (one luma channel when `grayscale`)."""
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ConfigError(
                f"transport 'sfm' was built for {self.in_channels}-channel images "
                f"[B, {self.in_channels}, H, W], got {tuple(images.shape)}; set in_channels"
            )
        if self.grayscale:
            weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype)
            return torch.einsum("bchw,c->bhw", images, weights).unsqueeze(1)
        return images

    def with_prior(self, cond: Tensor, prior: Prior, state: Any) -> Tensor:
        """The image, and with `guide` the prior's summary map as one more channel [B, C' + 1, H, W]."""
        if not self.guide:
            return cond
        guide = prior.guide(state)
        if guide is None:
            raise CompatibilityError(
                f"transport 'sfm' option 'guide' reads the prior's summary map, but prior {type(prior).__name__} "
                "has none (Prior.guide); use guide=false or a prior such as gtr"
            )
        return torch.cat([cond, guide.to(cond.dtype)], dim=1)

    def check_prior(self, prior: Prior) -> None:
        if self.guide and type(prior).guide is Prior.guide:
            raise CompatibilityError(
                f"transport 'sfm' option 'guide' reads the prior's summary map, but prior {type(prior).__name__} "
                "has none (Prior.guide); use guide=false or a prior such as gtr"
            )
        channels = getattr(prior, "channels", 1)
        if channels != 1:
            raise CompatibilityError(
                f"transport 'sfm' flows one-channel mask states, but prior "
                f"{type(prior).__name__} draws {channels} channels; use channels=1"
            )

    def forward(self, x: Tensor, t: Tensor | None, cond: Tensor) -> Tensor:
        """Velocity [N, 1, H, W] at states `x` [N, 1, H, W], times `t` [N] and images `cond` [N, C', H, W]."""
        if t is None:
            raise ConfigError("transport 'sfm' is a flow and needs a time; integrate it with a flow sampler")
        return self.net(torch.cat([cond, x], dim=1), t)

    def initial_state(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The prior sample itself, or on a truncated path the prior sample as a mask estimate noised to t0."""
        if not self.path.truncated:
            return x0
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.path.start(x0, noise)

    def sampler_options(self) -> dict[str, Any]:
        """The path's time span, `t0` and `t1`, for the flow sampler."""
        t0, t1 = self.path.span
        return {"t0": t0, "t1": t1}

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """Flow-matching + alpha * semantic-consistency loss on the path over all B*A (image,
        annotator) pairs. The source is a prior sample (one per image paired with every annotator,
        or one per annotator under the matched coupling), or N(0, I) noise on a truncated path
        (whose t lie in [t0, 1)); one t per source.

        Returns "loss", "fm" (velocity MSE) and "sf" (1 - Dice of x1_hat, mean over annotators).
        """
        image, masks = unpack_batch(batch)
        b, a = masks.shape[:2]
        draws = a if self.coupling == "matched" else 1
        with torch.no_grad():
            state = prior.condition(image) if self.guide or not self.path.truncated else None
            if self.path.truncated:
                x0 = torch.randn(b, draws, 1, *masks.shape[2:], device=image.device, dtype=image.dtype)
            else:
                x0 = prior.sample(state, draws).to(image.dtype)  # [B, draws, 1, H, W]
            cond = self.with_prior(self.condition(image), prior, state)
        t = self.path.times(torch.rand(b, draws, device=image.device, dtype=image.dtype))
        if self.coupling == "matched":
            order = matched_order(x0, masks)
            masks = torch.gather(masks, 1, repeat(order, "b a -> b a h w", h=masks.shape[2], w=masks.shape[3]))
        x0 = repeat(x0, "b n c h w -> (b n r) c h w", r=a // draws)
        t = repeat(t, "b n -> (b n r)", r=a // draws)
        x1 = rearrange(masks, "b a h w -> (b a) 1 h w")
        cond = repeat(cond, "b c h w -> (b a) c h w", a=a)
        point = self.path.sample(x0, x1, t)
        v = self(point.x_t, t, cond)
        fm = F.mse_loss(v, point.u_t)
        x1_hat = self.path.estimate_x1(point.x_t, v, t)
        sf = (1 - SF_LOSSES[self.sf_loss](x1_hat, x1)).mean()
        return {"loss": fm + self.alpha * sf, "fm": fm, "sf": sf}

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, sf_loss={self.sf_loss!r}, grayscale={self.grayscale}, path={self.path!r}, "
            f"coupling={self.coupling!r}, guide={self.guide}"
        )
