"""Discrete-state diffusion of masks: CCDM (Zbinden et al., "Stochastic Segmentation with Conditional
Categorical Diffusion Models", ICCV 2023) and BerDiff (Chen et al., "BerDiff: Conditional Bernoulli
Diffusion Model for Medical Image Segmentation", MICCAI 2023) as one transport.

`categorical-diffusion` is a conditional denoiser of the categorical process of
`ambiseg.categorical` over K classes (K = 2, a binary mask, is BerDiff's Bernoulli diffusion):
ambiseg's `TimeUNet` sees the image concatenated with x_k and gives the probabilities of x_0.
It trains on the variational bound, KL(q(x_{k-1} | x_k, x_0) || p(x_{k-1} | x_k)) at a uniform
step (the x_0 cross-entropy at k = 1), plus `ce_weight` times the x_0 cross-entropy at every
step (BerDiff's BCE; CCDM has none). Sampling starts from the `uniform-mask` prior (x_T uniform)
and runs the `categorical` (ancestral) or `categorical-ddim` (BerDiff's) sampler. The recipes
`ccdm` and `berdiff` are the two papers' settings of the same transport.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..categorical import CategoricalProcess
from ..errors import CompatibilityError, ConfigError, closest
from ..interfaces import Prior, Transport
from ..losses import pick_annotator, unpack_batch
from ..nets import TimeUNet
from ..noise_schedules import DiffusionSchedule
from ..recipes import Recipe, register_recipe
from ..registry import noise_schedules, priors, transports
from .budget import with_lidc_v2

__all__ = ["UniformMaskPrior", "CategoricalDiffusion", "PREDICTIONS", "CCDM", "BERDIFF"]

# What the denoiser's output is (its logits), turned into x_0 probabilities by the transport:
PREDICTIONS = {
    "x0": "the classes of x_0 (CCDM)",
    "flip": "K = 2 only: whether x_0 differs from x_k, BerDiff's Bernoulli noise eps = |x_k - x_0|",
}


@priors.register("uniform-mask")
class UniformMaskPrior(Prior):
    """A uniform binary mask [1, H, W] (each pixel 0 or 1 with probability 1/2), independent of the
    image: the stationary state x_T of a two-class categorical diffusion (BerDiff's B(1/2) start)."""

    draws = "mask"

    def condition(self, images: Tensor) -> Any:
        return images.shape[0], images.shape[-2:], images.device, images.dtype

    def sample(self, state: Any, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        b, (h, w), device, dtype = state
        u = torch.rand(b, num_samples, 1, h, w, generator=generator, device=device, dtype=dtype)
        return (u < 0.5).to(dtype)


@transports.register("categorical-diffusion")
class CategoricalDiffusion(Transport):
    """Conditional denoiser of a categorical diffusion over label maps (CCDM; BerDiff for K = 2).

    The state is a label map in state layout (`ambiseg.categorical`): the mask [N, 1, H, W] for
    K = 2, one-hot [N, K, H, W] otherwise (class 0 is the background; ambiseg's masks fill
    classes 0 and 1). `forward(x_k, k, image)` returns the x_0 probabilities in that layout.

    Args:
        in_channels: image channels (concatenated with the state's channels).
        classes: K >= 2 (2: a binary mask, both papers' LIDC setting).
        steps: T, the length of the chain.
        schedule: the noise schedule, a name of `noise_schedules` or `{"name": ..., **options}`;
            "cosine" (both papers) or "linear". Its chain length is `steps`.
        truncation: start step of sampling (and the largest step trained on); None = T. Below T the
            prior's sample is read as a mask estimate x_0 and sampling starts from x_k ~ q(x_k | x_0),
            as a truncated Gaussian diffusion does (`tdpm`).
        reverse: how p(x_{k-1} | x_k) is built from the x_0 probabilities: "mixture" (CCDM) or
            "plugin" (BerDiff); see `ambiseg.categorical.REVERSES`.
        prediction: the network's output, a key of `PREDICTIONS`: "x0" (CCDM) or "flip" (BerDiff's
            eps-prediction; K = 2).
        ce_weight: weight of the x_0 cross-entropy added to the KL (BerDiff 1, CCDM 0).
        width, mults, blocks, attention, groups: the `TimeUNet` denoiser (groups: GroupNorm groups).
    """

    kind = "categorical"
    accepts = frozenset({"mask"})
    default_training: ClassVar[dict[str, Any]] = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0}

    def __init__(
        self,
        *,
        in_channels: int = 1,
        classes: int = 2,
        steps: int = 250,
        schedule: str | dict[str, Any] = "cosine",
        truncation: int | None = None,
        reverse: str = "mixture",
        prediction: str = "x0",
        ce_weight: float = 0.0,
        width: int = 32,
        mults: tuple[int, ...] = (1, 1, 2, 3, 4),
        blocks: int = 2,
        attention: bool = True,
        groups: int = 8,
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(
                f"categorical-diffusion prediction '{prediction}'{closest(prediction, PREDICTIONS)}; choose one "
                f"of: {', '.join(PREDICTIONS)}"
            )
        if prediction == "flip" and int(classes) != 2:
            raise ConfigError(f"prediction 'flip' (BerDiff's Bernoulli noise) needs classes=2, got {classes}")
        if float(ce_weight) < 0:
            raise ConfigError(f"categorical-diffusion ce_weight must be >= 0, got {ce_weight}")
        schedule_obj = noise_schedules.from_spec(
            schedule, where="transport 'categorical-diffusion' option 'schedule'", steps=steps
        )
        if not isinstance(schedule_obj, DiffusionSchedule):
            raise ConfigError(f"noise schedule {schedule!r} must build a DiffusionSchedule")
        self.process = CategoricalProcess(schedule_obj, classes, reverse=reverse)
        if truncation is not None and not 1 <= int(truncation) <= self.process.steps:
            raise ConfigError(
                f"categorical-diffusion truncation must be a step in 1..{self.process.steps}, got {truncation}"
            )
        self.start_step = self.process.steps if truncation is None else int(truncation)
        self.prediction, self.ce_weight = prediction, float(ce_weight)
        c = self.process.channels
        self.denoiser = TimeUNet(
            in_channels + c, c, width=width, mults=tuple(mults), blocks=blocks, attention=attention, groups=groups
        )

    def check_prior(self, prior: Prior) -> None:
        """A mask prior only: `uniform-mask` for x_T, or a mask estimate (e.g. GTR) with a truncation."""
        if prior.draws != "mask":
            raise CompatibilityError(
                f"transport categorical-diffusion starts from a mask, but prior {type(prior).__name__} draws "
                f"{prior.draws} states; use the 'uniform-mask' prior (or a mask estimate with a truncation)"
            )

    def initial_state(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """x_start ~ q(x_start | x_0) with the prior's mask [N, 1, H, W] (0/1 or probabilities) as x_0;
        from `uniform-mask` at T this is exactly uniform for K = 2."""
        return self.process.q_sample(self.process.from_mask(x0.clamp(0.0, 1.0)), self.start_step, generator)

    def sampler_options(self) -> dict[str, Any]:
        """The categorical process and the start step, for the categorical samplers."""
        return {"process": self.process, "start": self.start_step}

    def logits(self, x: Tensor, k: Tensor, image: Tensor) -> Tensor:
        """The network's output [N, C, H, W] at states `x` [N, C, H, W] and steps `k` [N]."""
        return self.denoiser(torch.cat([image, x], dim=1), k.to(x.dtype) / self.process.steps)

    def log_x0(self, x: Tensor, k: Tensor, image: Tensor) -> Tensor:
        """log p(x_0 | x_k) [N, K, H, W] over all classes (full layout), in at least float32: under
        bf16 autocast the KL between nearby categoricals would drown in rounding."""
        out = self.logits(x, k, image)
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        if self.process.classes > 2:
            return F.log_softmax(out, dim=1)
        if self.prediction == "flip":  # x0_hat = |x_k - eps_hat|: the logit changes sign where x_k = 1
            out = (1.0 - 2.0 * x) * out
        return torch.cat([F.logsigmoid(-out), F.logsigmoid(out)], dim=1)

    def forward(self, x: Tensor, t: Tensor | None, cond: Any) -> Tensor:
        """x_0 probabilities (state layout) at x_k; `cond` is the per-sample image [N, C_img, H, W]."""
        if t is None:
            raise ConfigError(
                "transport 'categorical-diffusion' is a denoiser and needs a step; integrate it with a categorical "
                "sampler"
            )
        return self.process.compact(self.log_x0(x, t, cond).exp())

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """KL term of the variational bound at a uniform step of the (truncated) chain, one annotator
        per image, plus `ce_weight` x the x_0 cross-entropy; per pixel, in nats."""
        image, masks = unpack_batch(batch)
        x0 = self.process.from_mask(pick_annotator(masks).round())
        k = torch.randint(1, self.start_step + 1, (x0.shape[0],), device=x0.device)
        xk = self.process.q_sample(x0, k)
        log_p0 = self.log_x0(xk, k, image)
        kl = self.process.kl(x0, xk, self.process.compact(log_p0.exp()), k).mean()
        ce = -(self.process.full(x0) * log_p0).sum(dim=1).mean()
        return {"loss": kl + self.ce_weight * ce, "kl": kl, "ce": ce}

    def to_probs(self, x: Tensor) -> Tensor:
        """Final label map -> foreground [N, H, W]: the mask itself (K = 2), else 1 - P(background)."""
        fg = x[:, 0] if self.process.classes == 2 else 1.0 - x[:, 0]
        return fg.clamp(0.0, 1.0)


# ---- recipes -------------------------------------------------------------------------------------
# Shared presets: the denoiser and training sizes of cimd's (ambiseg/methods/cimd.py), so the
# diffusion baselines cost alike; sampling on 10 evenly spaced steps of the chain.
_SMOKE_NET = {"width": 8, "mults": (1, 2), "blocks": 1, "attention": False}
_CPU_NET = {"width": 16, "mults": (1, 2, 4), "blocks": 1, "attention": False}
_LIDC_NET = {"width": 8, "mults": (1, 2, 4), "blocks": 1, "groups": 4, "attention": False}
_SMOKE_TRAIN = {"steps": 2, "batch_size": 4, "val_images": 2, "val_samples": 2}
_CPU_TRAIN = {"lr": 1e-3, "steps": 1500, "batch_size": 8, "val_images": 4, "val_samples": 4}
# cpu-lidc: cimd's wall time. Its step costs 0.7x cimd's (no latent encoders: 0.139 against 0.203 s at batch 8,
# 1 thread, measured side by side) and a sample as much (10 steps), so 3,000 steps and 8 validations
_LIDC_TRAIN = {"lr": 1e-3, "steps": 3000, "batch_size": 8, "val_every": 375, "val_images": 48, "val_samples": 16}
_V2_FACTOR = 4.0  # cpu-lidc-v2: x4 = 12,000 steps, 4 validation samples; about cimd's 8,000 in time (budget.py)


def _presets(
    sampler: str, paper: dict[str, dict[str, Any]], cpu_transport: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """smoke / cpu / cpu-lidc (+ cpu-lidc-v2) with `sampler` on 10 steps (smoke: 5), `cpu_transport`
    options in the two cpu presets, and the paper presets."""
    out: dict[str, dict[str, Any]] = {
        "smoke": {
            "transport": {"steps": 25, **_SMOKE_NET},
            "sampler": {"name": sampler, "steps": 5},
            "train": {"transport": dict(_SMOKE_TRAIN)},
        },
        "cpu": {
            "transport": {**_CPU_NET, **(cpu_transport or {})},
            "sampler": {"name": sampler, "steps": 10},
            "train": {"transport": dict(_CPU_TRAIN)},
        },
        "cpu-lidc": {
            "transport": {**_LIDC_NET, **(cpu_transport or {})},
            "sampler": {"name": sampler, "steps": 10},
            "train": {"transport": dict(_LIDC_TRAIN)},
        },
        **paper,
    }
    return with_lidc_v2(out, {"transport": _V2_FACTOR}, stage_options={"transport": {"val_samples": 4}})


# 256 px: the public codes' U-Net level multipliers for that size (both use (1, 1, 2, 2, 4, 4))
_ISIC3_MULTS = (1, 1, 2, 2, 4, 4)

CCDM = register_recipe(
    Recipe(
        name="ccdm",
        prior={"name": "uniform-mask"},
        transport={"name": "categorical-diffusion"},
        sampler={"name": "categorical"},
        stages=("transport",),
        train={"transport": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "batch_size": 16, "epochs": 2000}},
        presets=_presets(
            "categorical",
            {
                # public code (params.yml): Adam 1e-4 decayed linearly to 1e-6, polyak (EMA) 0.9999,
                # batch 16, 2000 epochs; all 250 steps at sampling (the recipe's sampler)
                "paper-lidc": {
                    "in_channels": 1,
                    "image_size": 128,
                    "train": {"transport": {"schedule": "linear", "min_lr": 1e-6, "ema": 0.9999}},
                },
                "paper-isic3": {
                    "in_channels": 3,
                    "image_size": 256,
                    "transport": {"mults": _ISIC3_MULTS},
                    "train": {"transport": {"schedule": "linear", "min_lr": 1e-6, "ema": 0.9999}},
                },
            },
            # the KL alone did not localise a single LIDC nodule in 650 steps (foreground probability
            # 0.000 inside the raters' union at every step k); with the x_0 cross-entropy beside it
            # (weight 1, BerDiff's and D3PM's hybrid loss) 0.83 after 50 steps (docs/methods/ccdm.md)
            cpu_transport={"ce_weight": 1.0},
        ),
        description="CCDM: categorical diffusion of label maps from uniform noise (Zbinden et al., ICCV 2023)",
    )
)

_BERDIFF_TRANSPORT = {
    "name": "categorical-diffusion",
    "steps": 1000,
    "reverse": "plugin",
    "prediction": "flip",
    "ce_weight": 1.0,
    "width": 128,
}

BERDIFF = register_recipe(
    Recipe(
        name="berdiff",
        prior={"name": "uniform-mask"},
        transport=dict(_BERDIFF_TRANSPORT),
        sampler={"name": "categorical-ddim", "steps": 10},
        stages=("transport",),
        train={"transport": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "epochs": 200}},
        presets=_presets(
            "categorical-ddim",
            {
                # no training script is public: improved-diffusion's TrainLoop defaults (EMA 0.9999);
                # epochs are ambiseg's choice (those of cimd's presets)
                "paper-lidc": {"in_channels": 1, "image_size": 128, "train": {"transport": {"ema": 0.9999}}},
                "paper-isic3": {
                    "in_channels": 3,
                    "image_size": 256,
                    "transport": {"mults": _ISIC3_MULTS},
                    "train": {"transport": {"epochs": 120, "ema": 0.9999}},
                },
            },
        ),
        description="BerDiff: Bernoulli diffusion of binary masks, KL + BCE, 10-step BDDIM (Chen et al., MICCAI 2023)",
    )
)
