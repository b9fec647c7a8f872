"""Flow-SSN, continuous-time (De Sousa Ribeiro et al., "Flow Stochastic Segmentation Networks", ICCV 2025).

The segmentation's class logits start from an image-conditioned Gaussian, the *base*
`u ~ N(mu(x), s^2 I)` over [K, H, W] with K = 2 classes (background, foreground), and a small
time-conditioned network carries them to the mask along the straight path
`y_t = (1 - t) u + t y` between the base draw and the one-hot mask `y`. The flow network
predicts the mask's class logits from `y_t`; base and flow are trained together (stage "joint",
gradients reach the base through the reparameterised draw `u`) on the categorical likelihood of
one randomly drawn annotator's mask, averaged over pixels, with M Monte-Carlo draws of u
combined as `-log mean_m p_m`. Most of the capacity is in the base network; the flow is tiny.

Sampling integrates `dy/dt = softmax(f(y_t, t)) - u` from a base draw (`velocity="start"`, the
public code's field; the start u rides along as K extra state channels the field leaves fixed)
or `(softmax(f(y_t, t)) - y_t) / (1 - t)` (`velocity="endpoint"`, the flow-matching velocity of
the predicted mask, which needs no copy of u; for samplers that do not evaluate t = 1, such as
euler and midpoint). The foreground probability of the final state is
`clamp((y_fg - y_bg + 1) / 2, 0, 1)`: on the probability simplex it is y_fg itself, and it
crosses 0.5 exactly where the public code's arg-max changes class.

Public code: github.com/biomedia-mira/flow-ssn (`ContinuousFlowSSN`); docs/methods/flow-ssn.md
lists the published settings and every departure.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from ..errors import CompatibilityError, ConfigError, closest
from ..interfaces import Prior, Transport
from ..losses import pick_annotator, unpack_batch
from ..nets import TimeUNet
from ..recipes import Recipe, register_recipe
from ..registry import priors, transports
from .budget import with_lidc_v2

__all__ = [
    "CLASSES",
    "VELOCITIES",
    "BaseState",
    "FlowSSNBase",
    "FlowSSNFlow",
    "one_hot",
    "straight_path",
    "mc_categorical_nll",
    "RECIPE",
]

CLASSES = 2  # background and foreground: the public code's `num_classes` for LIDC and REFUGE
VELOCITIES = ("start", "endpoint")
MIN_SCALE = 1e-5  # floor of a learned base scale (the public code clamps log-scales at log 1e-5)
_MIN_REMAINING = 1e-3  # floor of 1 - t in the endpoint velocity, so an evaluation at t = 1 stays finite


def one_hot(mask: Tensor) -> Tensor:
    """Binary mask [B, 1, H, W] in {0, 1} -> one-hot classes [B, 2, H, W] (channel 0 background)."""
    return torch.cat([1 - mask, mask], dim=1)


def straight_path(u: Tensor, y: Tensor, t: Tensor) -> Tensor:
    """`(1 - t) u + t y`: the training state between base draws `u` [N, K, H, W] and masks `y` at times `t` [N]."""
    t = t.reshape(-1, *([1] * (u.ndim - 1)))
    return (1 - t) * u + t * y


def mc_categorical_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Per-image loss [B]: -log of the mean over M draws of exp(mean over pixels of log p(y | logits)).

    Args:
        logits: class logits [B, M, K, H, W], one set per Monte-Carlo draw of the base.
        target: one-hot mask [B, K, H, W] (the drawn annotator's).

    With M = 1 this is the mean per-pixel cross-entropy; the pixel mean (not sum) is the public
    code's scale, which also tempers the log-sum-exp over draws.
    """
    log_p = (F.log_softmax(logits, dim=2) * target.unsqueeze(1)).sum(2).mean(dim=(-2, -1))  # [B, M]
    return -(torch.logsumexp(log_p, dim=1) - math.log(log_p.shape[1]))


def _net_options(
    width: int, mults: tuple[int, ...], blocks: int, groups: int, heads: int, head_dim: int, stem_kernel: int
) -> dict[str, Any]:
    """TimeUNet options shared by the base and the flow: no attention at the levels (the public
    U-Nets attend only in the bottleneck), softmax attention in the bottleneck."""
    return {
        "width": int(width),
        "mults": tuple(int(m) for m in mults),
        "blocks": int(blocks),
        "groups": int(groups),
        "attention": False,
        "full_attention_mid": True,
        "heads": int(heads),
        "head_dim": int(head_dim),
        "stem_kernel": int(stem_kernel),
    }


@dataclasses.dataclass(frozen=True)
class BaseState:
    """The base Gaussian of each image: `mean` and `scale` [B, K, H, W] (the scale may be an
    expanded constant)."""

    mean: Tensor
    scale: Tensor


@priors.register("flow-ssn-base")
class FlowSSNBase(Prior):
    """Image-conditioned diagonal Gaussian over the class logits [2, H, W]: Flow-SSN's base.

    A U-Net (ambiseg's time-conditioned ResBlock U-Net, run at t = 0: the public base is the same
    U-Net family with no time input) maps the image to the mean logits, and with `std = 0` also to
    a log-scale per class and pixel. Its draws are `mean + scale * e`, e ~ N(0, I), reparameterised
    so the joint stage trains the network through the flow's loss. It has no loss of its own.

    Args:
        width, mults, blocks: U-Net widths (`width * mults`, one level each) and ResBlocks per level
            (public LIDC base: 32, (1, 2, 4, 8), 1).
        groups: GroupNorm groups of every ResBlock (must divide every level width).
        heads, head_dim: softmax attention in the bottleneck.
        stem_kernel: kernel of the input conv (3 as the public U-Net).
        std: fixed scale of the base (the public LIDC and REFUGE runs use 1); 0 learns a scale per
            class and pixel from the image.
        in_channels: image channels (filled in from the data by the Method).
    """

    draws = "logits"  # Gaussian class logits [2, H, W]
    channels: ClassVar[int] = CLASSES

    def __init__(
        self,
        *,
        width: int = 32,
        mults: tuple[int, ...] = (1, 2, 4, 8),
        blocks: int = 1,
        groups: int = 2,
        heads: int = 4,
        head_dim: int = 64,
        stem_kernel: int = 3,
        std: float = 1.0,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if not (math.isfinite(float(std)) and float(std) >= 0):
            raise ConfigError(f"prior 'flow-ssn-base' option 'std' must be >= 0 (0 learns it), got {std!r}")
        self.std = float(std)
        options = _net_options(width, mults, blocks, groups, heads, head_dim, stem_kernel)
        out = CLASSES if self.std else 2 * CLASSES
        self.net = TimeUNet(int(in_channels), out, **options)

    def condition(self, images: Tensor) -> BaseState:
        """The base Gaussian of each image in `images` [B, C, H, W] (one network pass)."""
        out = self.net(images, torch.zeros(images.shape[0], device=images.device, dtype=images.dtype))
        if self.std:
            return BaseState(out, torch.full((), self.std, device=out.device, dtype=out.dtype).expand_as(out))
        mean, log_scale = out.chunk(2, dim=1)
        return BaseState(mean, log_scale.clamp_min(math.log(MIN_SCALE)).exp())

    def sample(self, state: BaseState, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """`num_samples` reparameterised base draws per image: [B, num_samples, 2, H, W]."""
        b = state.mean.shape[0]
        eps = torch.randn(
            b, num_samples, *state.mean.shape[1:], generator=generator, device=state.mean.device, dtype=state.mean.dtype
        )
        return state.mean.unsqueeze(1) + state.scale.unsqueeze(1) * eps

    def extra_repr(self) -> str:
        return f"std={self.std}" if self.std else "std=learned"


@transports.register("flow-ssn-flow")
class FlowSSNFlow(Transport):
    """Flow-SSN's flow: a small time-conditioned U-Net predicting the mask's class logits from y_t.

    Trained jointly with its base (stage "joint") by `loss`; integrated by any flow sampler
    (the public code: euler, 50 steps for the published numbers).

    Args:
        width, mults, blocks: U-Net widths and ResBlocks per level (public LIDC flow: 16,
            (1, 1, 1), 1).
        groups: GroupNorm groups (the public flow: 16 channels per group, so 1 at width 16).
        heads, head_dim: softmax attention in the bottleneck (public LIDC: 1 x 16).
        stem_kernel: kernel of the input conv (3 as the public U-Net).
        time_scale: t in [0, 1] is multiplied by this before the sinusoidal embedding (1000 as the
            public code).
        mc_samples: base draws M per image in the loss (1 in the public LIDC and REFUGE runs).
        velocity: "start" (the public code's field softmax(f) - u; the state carries u along, so
            it has 2K channels) or "endpoint" ((softmax(f) - y_t) / (1 - t); K channels).
        image_input: also give the flow the image (concatenated with y_t), as the public
            `cond_flow` option does (off in the published runs); needed with a base that ignores the
            image, such as `noise` with channels=2.
        in_channels: image channels (filled in from the data by the Method).
    """

    accepts = frozenset({"logits", "noise"})  # 2-channel logit states (check_prior asks for 2 channels)
    kind: ClassVar[str] = "flow"
    joint: ClassVar[bool] = True
    default_training: ClassVar[dict] = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "grad_clip": 10.0}

    def __init__(
        self,
        *,
        width: int = 16,
        mults: tuple[int, ...] = (1, 1, 1),
        blocks: int = 1,
        groups: int = 1,
        heads: int = 1,
        head_dim: int = 16,
        stem_kernel: int = 3,
        time_scale: float = 1000.0,
        mc_samples: int = 1,
        velocity: str = "start",
        image_input: bool = False,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if velocity not in VELOCITIES:
            raise ConfigError(
                f"transport 'flow-ssn-flow' option 'velocity' is {velocity!r}{closest(str(velocity), VELOCITIES)}; "
                f"choose one of: {', '.join(VELOCITIES)}"
            )
        if isinstance(mc_samples, bool) or int(mc_samples) != mc_samples or int(mc_samples) < 1:
            raise ConfigError(
                f"transport 'flow-ssn-flow' option 'mc_samples' must be an integer >= 1, got {mc_samples!r}"
            )
        self.velocity, self.mc_samples = velocity, int(mc_samples)
        self.image_input, self.in_channels = bool(image_input), int(in_channels)
        options = _net_options(width, mults, blocks, groups, heads, head_dim, stem_kernel)
        extra = self.in_channels if self.image_input else 0
        self.net = TimeUNet(CLASSES + extra, CLASSES, time_scale=time_scale, **options)

    def check_prior(self, prior: Prior) -> None:
        """Refuse a prior whose draws are not 2-channel logit states (the base or 2-channel noise)."""
        channels = getattr(prior, "channels", 1)
        if channels != CLASSES:
            raise CompatibilityError(
                f"transport 'flow-ssn-flow' flows the logits of {CLASSES} classes (background, foreground), but "
                f"prior {type(prior).__name__} draws {channels}-channel states; pair it with prior 'flow-ssn-base' "
                "(or 'noise' with channels=2 and image_input=true)"
            )

    def condition(self, images: Tensor) -> Tensor | None:
        """The image [B, C, H, W] when the flow sees it (`image_input`), else None."""
        if not self.image_input:
            return None
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ConfigError(
                f"transport 'flow-ssn-flow' was built for {self.in_channels}-channel images, got {tuple(images.shape)}"
            )
        return images

    def logits(self, y_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """Predicted class logits of the mask [N, 2, H, W] from states `y_t` [N, 2, H, W] at times `t` [N]."""
        x = y_t if cond is None else torch.cat([y_t, cond.to(y_t.dtype)], dim=1)
        return self.net(x, t)

    def forward(self, x: Tensor, t: Tensor | None, cond: Tensor | None) -> Tensor:
        """Velocity at states `x` [N, 2K or K, H, W] (see `velocity`) and times `t` [N]."""
        if t is None:
            raise ConfigError("transport 'flow-ssn-flow' is a flow and needs a time; integrate it with a flow sampler")
        if self.velocity == "start":
            y_t, start = x[:, :CLASSES], x[:, CLASSES:]
            return torch.cat([self.logits(y_t, t, cond).softmax(dim=1) - start, torch.zeros_like(start)], dim=1)
        remaining = (1 - t).clamp_min(_MIN_REMAINING).reshape(-1, 1, 1, 1)
        return (self.logits(x, t, cond).softmax(dim=1) - x) / remaining

    def initial_state(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The base draw, and with velocity "start" a copy of it that the field keeps fixed: [N, 2K, H, W]."""
        return torch.cat([x0, x0], dim=1) if self.velocity == "start" else x0

    def to_probs(self, x: Tensor) -> Tensor:
        """Foreground probability [N, H, W]: clamp((y_fg - y_bg + 1) / 2, 0, 1) of the final logit state."""
        return ((x[:, 1] - x[:, 0] + 1) / 2).clamp(0.0, 1.0)

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """Categorical likelihood of one random annotator's mask from M base draws per image.

        One t ~ U[0, 1) per image, shared by its M draws. Returns "loss" (`mc_categorical_nll`,
        mean over images) and "ce" (the mean per-pixel cross-entropy over images and draws).
        """
        image, masks = unpack_batch(batch)
        target = one_hot(pick_annotator(masks))  # [B, K, H, W]
        b, m = image.shape[0], self.mc_samples
        u = prior.sample(prior.condition(image), m).to(image.dtype)  # [B, M, K, H, W], gradients reach the base
        t = torch.rand(b, device=image.device, dtype=image.dtype)
        y_t = straight_path(u.flatten(0, 1), repeat(target, "b k h w -> (b m) k h w", m=m), t.repeat_interleave(m))
        cond = self.condition(image)
        cond = None if cond is None else cond.repeat_interleave(m, dim=0)
        logits = rearrange(self.logits(y_t, t.repeat_interleave(m), cond), "(b m) k h w -> b m k h w", m=m)
        loss = mc_categorical_nll(logits, target).mean()
        ce = -(F.log_softmax(logits, dim=2) * target.unsqueeze(1)).sum(2).mean()
        return {"loss": loss, "ce": ce}

    def extra_repr(self) -> str:
        return f"velocity={self.velocity!r}, mc_samples={self.mc_samples}, image_input={self.image_input}"


# ---- recipe and presets -------------------------------------------------------------------------

_BASE: dict[str, dict[str, Any]] = {
    "smoke": {"width": 8, "mults": (1, 2), "groups": 4, "heads": 1, "head_dim": 8},
    "cpu": {"width": 16, "mults": (1, 2, 4), "groups": 4, "heads": 2, "head_dim": 16},
    "cpu-lidc": {"width": 16, "mults": (1, 2, 4), "groups": 4, "heads": 2, "head_dim": 16},
    # public scripts/run_continuous_lidc.sh: base U-Net 32 x (1, 2, 4, 8), 1 ResBlock, std 1
    "paper-lidc": {
        "width": 32,
        "mults": (1, 2, 4, 8),
        "blocks": 1,
        "groups": 2,
        "heads": 4,
        "head_dim": 64,
        "std": 1.0,
    },
    # public scripts/run_continuous_refuge.sh (no ISIC3 run was published): 32 x (1, 2, 2, 4, 6), 2 ResBlocks
    "paper-isic3": {
        "width": 32,
        "mults": (1, 2, 2, 4, 6),
        "blocks": 2,
        "groups": 2,
        "heads": 3,
        "head_dim": 64,
        "std": 1.0,
    },
}
_FLOW: dict[str, dict[str, Any]] = {
    "smoke": {"width": 8, "mults": (1, 1), "groups": 1, "heads": 1, "head_dim": 8},
    "cpu": {"width": 8, "mults": (1, 1, 1), "groups": 1, "heads": 1, "head_dim": 8},
    "cpu-lidc": {"width": 8, "mults": (1, 1, 1), "groups": 1, "heads": 1, "head_dim": 8},
    "paper-lidc": {"width": 16, "mults": (1, 1, 1), "blocks": 1, "groups": 1, "heads": 1, "head_dim": 16},
    "paper-isic3": {"width": 32, "mults": (1, 1, 1, 1), "blocks": 1, "groups": 2, "heads": 1, "head_dim": 32},
}
# Euler steps: the public code validates with 10 and reports its test numbers at 50; cpu-lidc takes 5
# so that 100 samples of each of the 500 test slices cost about what ATFM's cost at 5 steps
_STEPS = {"smoke": 3, "cpu": 10, "cpu-lidc": 5, "paper-lidc": 50, "paper-isic3": 50}
_PUBLIC_TRAIN: dict[str, Any] = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "grad_clip": 10.0}
_TRAIN: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 2, "batch_size": 4, "val_images": 2, "val_samples": 2},
    "cpu": {**_PUBLIC_TRAIN, "lr": 1e-3, "steps": 600, "batch_size": 8, "val_images": 8, "val_samples": 8},
    # one joint step at batch 16 costs about two of atfm's GTR steps (0.6 against 0.3 s on 2 shared
    # cores), so 1,500 steps train about as long as atfm's two cpu-lidc stages (GTR 1,500 + flow 1,000)
    "cpu-lidc": {
        **_PUBLIC_TRAIN,
        "lr": 1e-3,
        "steps": 1500,
        "batch_size": 16,
        "val_every": 250,
        "val_images": 48,
        "val_samples": 16,
    },
    # public LIDC script: batch 32, 1001 epochs, lr warm-up over 2000 steps, EMA 0.9999
    "paper-lidc": {**_PUBLIC_TRAIN, "batch_size": 32, "epochs": 1001, "warmup": 2000, "ema": 0.9999},
    # public REFUGE script: batch 16, 1001 epochs, warm-up 1000 steps, EMA 0.999
    "paper-isic3": {**_PUBLIC_TRAIN, "batch_size": 16, "epochs": 1001, "warmup": 1000, "ema": 0.999},
}
_DATA: dict[str, dict[str, Any]] = {
    "paper-lidc": {"in_channels": 1, "image_size": 128},
    "paper-isic3": {"in_channels": 3, "image_size": 256},
}
# cpu-lidc-v2: 1.5 x cpu-lidc's steps, about atfm's v2 training time (GTR 3,000 + flow 1,000 steps); 8
# validation samples (not 16) because each costs 5 flow evaluations (docs/methods/flow-ssn.md)
V2_JOINT_FACTOR = 1.5
V2_STAGE_OPTIONS = {"joint": {"val_samples": 8}}


def _presets() -> dict[str, dict[str, Any]]:
    out = {
        name: {
            **_DATA.get(name, {}),
            "prior": dict(_BASE[name]),
            "transport": dict(_FLOW[name]),
            "sampler": {"name": "euler", "steps": _STEPS[name]},
            "train": {"joint": dict(_TRAIN[name])},
        }
        for name in _BASE
    }
    return with_lidc_v2(out, {"joint": V2_JOINT_FACTOR}, stage_options=V2_STAGE_OPTIONS)


RECIPE = register_recipe(
    Recipe(
        name="flow-ssn",
        prior={"name": "flow-ssn-base"},
        transport={"name": "flow-ssn-flow"},
        sampler={"name": "euler", "steps": 50},
        stages=("joint",),
        presets=_presets(),
        description="Flow-SSN (ICCV 2025): image-conditioned Gaussian base over logits + small flow, trained jointly",
    )
)
