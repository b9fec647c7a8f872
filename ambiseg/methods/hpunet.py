"""Hierarchical Probabilistic U-Net (Kohl et al., "A Hierarchical Probabilistic U-Net for Modeling
Multi-Scale Ambiguities", arXiv:1905.13077, 2019) as a prior (`hpunet-latent`) and a map
transport (`hpunet-decoder`).

One residual U-Net carries the latents: its encoder runs on the image, and at each of the
decoder's coarsest scales a 1x1 conv gives a diagonal Gaussian per pixel whose sample is
concatenated to the features before they are upsampled, so every finer latent conditions on the
coarser ones. The prior owns that U-Net's encoder and latent-carrying decoder levels (and a
posterior copy on image + mask, for training); the transport owns the decoder's remaining,
finer levels and the logits. Sampling runs the encoder once per image; per sample the latent
levels run twice (once to draw z in the prior, once to decode it) and then the finer levels.

Training (one stage, "joint") reconstructs one annotation per image from the posterior's latents
fed through the prior's U-Net. The loss is the ELBO's cross-entropy and summed per-level KLs,
optionally with the public code's two additions, both on by default: the cross-entropy kept on
the top k% pixels of the batch, drawn with probability proportional to their cross-entropy
(`top_k`), and GECO (Rezende & Viola, 2018): a Lagrange multiplier, trained by gradient ascent,
on the constraint that a moving average of that cross-entropy stays below kappa per pixel
(`geco`). With both off it is `fcomb`'s loss: CE summed over pixels + beta KL, batch means.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..backbones.unet import encode_levels
from ..errors import CompatibilityError, ConfigError
from ..interfaces import LatentDraw, LatentPrior, Prior, Transport
from ..losses import pick_annotator, unpack_batch
from ..recipes import Recipe, register_recipe
from ..registry import priors, transports
from .budget import with_lidc_v2
from .latent import DiagonalGaussian
from .phiseg import pack_latents

__all__ = [
    "hpunet_channels",
    "PreActResBlock",
    "HierarchicalCore",
    "HPUNetLatent",
    "HPUNetDecoder",
    "Geco",
    "top_k_mask",
    "RECIPE",
]

PAPER_SIZE = 128
MULTIPLIERS = (1, 2, 4, 8)  # channel plan base * (1, 2, 4, 8, 8, ...), one entry per level


def hpunet_channels(image_size: int | None, base_channels: int) -> tuple[int, ...]:
    """The paper's channel plan for square images of side `image_size` (128 when None).

    One level per halving down to the coarsest integer side (1 px for powers of two), so 128 px
    gives the paper's 8 levels (128 ... 1) and 64 px gives 7.
    """
    size = PAPER_SIZE if image_size is None else int(image_size)
    levels = 1
    while size % 2**levels == 0:
        levels += 1
    return tuple(base_channels * MULTIPLIERS[min(i, len(MULTIPLIERS) - 1)] for i in range(levels))


def _init(module: nn.Module) -> None:
    """The public code's initialisation: orthogonal filters, biases from a normal of std 1e-3 cut at 2 std."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.trunc_normal_(m.bias, std=1e-3, a=-2e-3, b=2e-3)


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class PreActResBlock(nn.Module):
    """Pre-activated residual block: ReLU, `convs` 3x3 convs to `down` channels (ReLU between),
    a 1x1 conv to `out_channels` when `down` differs, added to the input (1x1-projected when its
    channel count differs). No normalisation. [N, in, H, W] -> [N, out, H, W]."""

    def __init__(self, in_channels: int, out_channels: int, down: int, *, convs: int = 3) -> None:
        super().__init__()
        chans = [in_channels] + [down] * convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True))
        self.up = nn.Conv2d(down, out_channels, 1) if down != out_channels else nn.Identity()
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for conv in self.convs:
            h = conv(F.relu(h))
        return self.skip(x) + self.up(h)


def _stage(in_channels: int, out_channels: int, *, blocks: int, convs: int) -> nn.Sequential:
    """`blocks` residual blocks at one scale, the first taking `in_channels`; inner width out / 2."""
    down = max(1, out_channels // 2)
    return nn.Sequential(
        *(
            PreActResBlock(in_channels if i == 0 else out_channels, out_channels, down, convs=convs)
            for i in range(blocks)
        )
    )


class HierarchicalCore(nn.Module):
    """The residual U-Net's encoder and its decoder levels that carry latents.

    Encoder level i (0 finest) has `channels[i]` channels at H / 2^i. Latent level l (0 the
    coarsest) is a Gaussian over z_l [latent_dims[l], H / 2^(n-1-l), W / 2^(n-1-l)] (n levels)
    from a 1x1 conv of the decoder features there; z_l joins those features, which are upsampled
    (nearest, x2), joined by the encoder features of that scale and passed through residual
    blocks. With `last=False` the blocks after the finest latent are left out (a posterior net,
    whose decoder features nothing reads).
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...],
        latent_dims: tuple[int, ...],
        *,
        blocks: int,
        convs: int,
        last: bool = True,
    ) -> None:
        super().__init__()
        self.channels, self.latent_dims = tuple(channels), tuple(latent_dims)
        chans = (in_channels, *channels)
        self.encoder = nn.ModuleList(
            _stage(chans[i], chans[i + 1], blocks=blocks, convs=convs) for i in range(len(channels))
        )
        rev = self.channels[::-1]
        self.heads = nn.ModuleList(nn.Conv2d(rev[lvl], 2 * d, 1) for lvl, d in enumerate(latent_dims))
        count = len(latent_dims) if last else len(latent_dims) - 1
        self.ups = nn.ModuleList(
            _stage(latent_dims[lvl] + rev[lvl] + rev[lvl + 1], rev[lvl + 1], blocks=blocks, convs=convs)
            for lvl in range(count)
        )
        _init(self)

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features of every level, finest first (average pooling between levels)."""
        hint = "set image_size to the data's size (levels follow it) or give fewer channels"
        return encode_levels(self.encoder, x, owner="hpunet", hint=hint)

    def decode(
        self, feats: list[Tensor], *, given: list[Tensor] | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[DiagonalGaussian], Tensor]:
        """Latents and their Gaussians per level (coarsest first), and the decoder features after
        the last latent level [N, channels[-L-1], H / 2^(n-1-L), W / 2^(n-1-L)].

        `feats`: `encode`'s output (only its coarsest L + 1 levels are read). Each level uses
        `given[l]` when given (the posterior's samples, in training), otherwise draws its own.
        """
        h = feats[-1]
        zs: list[Tensor] = []
        dists: list[DiagonalGaussian] = []
        for lvl, head in enumerate(self.heads):
            mu, log_sigma = head(h).chunk(2, dim=1)
            dists.append(DiagonalGaussian(mu, log_sigma))
            zs.append(given[lvl] if given is not None else dists[-1].rsample(generator=generator))
            if lvl < len(self.ups):
                h = self.ups[lvl](torch.cat([_up(torch.cat([zs[-1], h], dim=1)), feats[-2 - lvl]], dim=1))
        return zs, dists, h

    def latent_shapes(self, size: tuple[int, int]) -> tuple[tuple[int, int, int], ...]:
        """Level l (coarsest first): (latent_dims[l], H / 2^(n-1-l), W / 2^(n-1-l))."""
        n = len(self.channels)
        return tuple((d, size[0] >> (n - 1 - lvl), size[1] >> (n - 1 - lvl)) for lvl, d in enumerate(self.latent_dims))


def unpack_latents(x: Tensor, shapes: tuple[tuple[int, int, int], ...]) -> list[Tensor]:
    """Flat states [N, D] -> per-level latents [N, C, h, w] (the inverse of `pack_latents`)."""
    sizes = [c * h * w for c, h, w in shapes]
    if sum(sizes) != x.shape[1]:
        raise ConfigError(
            f"hpunet state of size {x.shape[1]} does not fit latents {list(shapes)} (size {sum(sizes)}); "
            "sample with images of the size the latents came from"
        )
    return [
        rearrange(p, "n (c h w) -> n c h w", c=c, h=h, w=w)
        for p, (c, h, w) in zip(x.split(sizes, dim=1), shapes, strict=True)
    ]


@priors.register("hpunet-latent")
class HPUNetLatent(LatentPrior):
    """Prior U-Net p(z | image) and posterior U-Net q(z | image, mask), hierarchical spatial latents.

    A state is all levels' z flattened and concatenated, coarsest first: [N, sum_l C_l h_l w_l].

    Args:
        in_channels: image channels (the posterior net gets one more: the mask, 0/1).
        image_size: image side; sets the number of levels when `channels` is None.
        channels: channels of every U-Net level, finest first (None: `base_channels` x
            (1, 2, 4, 8, 8, ...) with one level per halving of `image_size`, 8 levels at 128 px).
        base_channels: first entry of that plan (24 in the public code).
        latent_dims: channels of each latent level, coarsest first; their number is the number
            of decoder scales with a latent ((1, 1, 1, 1) in the public code: 1x1 to 8x8 at 128 px).
        blocks_per_level: residual blocks per level (3).
        convs_per_block: 3x3 convs per residual block (3).
    """

    draws = "latent"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int | None = None,
        channels: tuple[int, ...] | None = None,
        base_channels: int = 24,
        latent_dims: tuple[int, ...] = (1, 1, 1, 1),
        blocks_per_level: int = 3,
        convs_per_block: int = 3,
    ) -> None:
        super().__init__()
        plan = tuple(int(c) for c in channels) if channels else hpunet_channels(image_size, int(base_channels))
        dims = tuple(int(d) for d in latent_dims)
        if (
            min(plan, default=0) < 1
            or min(dims, default=0) < 1
            or int(blocks_per_level) < 1
            or int(convs_per_block) < 1
        ):
            raise ConfigError(
                f"hpunet-latent: channels, latent_dims, blocks_per_level and convs_per_block must be positive, got "
                f"channels={plan}, latent_dims={dims}, blocks_per_level={blocks_per_level}, "
                f"convs_per_block={convs_per_block}"
            )
        if len(dims) >= len(plan):
            raise ConfigError(
                f"hpunet-latent: {len(dims)} latent levels need at least {len(dims) + 1} U-Net levels, got "
                f"{len(plan)} (channels={plan}); give fewer latent_dims or a larger image_size"
            )
        self.channels, self.latent_dims = plan, dims
        self.blocks, self.convs = int(blocks_per_level), int(convs_per_block)
        self.prior_net = HierarchicalCore(in_channels, plan, dims, blocks=self.blocks, convs=self.convs)
        self.posterior_net = HierarchicalCore(
            in_channels + 1, plan, dims, blocks=self.blocks, convs=self.convs, last=False
        )

    def condition(self, images: Tensor) -> list[Tensor]:
        """The prior U-Net's encoder features, finest first (image-only work)."""
        return self.prior_net.encode(images)

    def sample(self, state: list[Tensor], num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Packed z ~ p(z | image): [B, num_samples, D]."""
        used = len(self.prior_net.latent_dims) + 1  # the decoder's latent levels read only the coarsest features
        feats = [f.repeat_interleave(num_samples, dim=0) for f in state[-used:]]
        zs, _, _ = self.prior_net.decode(feats, generator=generator)
        return rearrange(pack_latents(zs), "(b n) d -> b n d", n=num_samples)

    def reconstruction(self, images: Tensor, mask: Tensor) -> tuple[LatentDraw, Tensor, list[Tensor]]:
        """Posterior draw for `mask` [B, 1, H, W] (packed z, KL [B, L] per level, coarsest first,
        against the prior given the posterior's samples), the prior U-Net's decoder features at
        that z, and its encoder features: what the decoder's finer levels reconstruct from."""
        zs, posteriors, _ = self.posterior_net.decode(self.posterior_net.encode(torch.cat([images, mask], dim=1)))
        feats = self.prior_net.encode(images)
        _, priors_, h = self.prior_net.decode(feats, given=zs)
        kl = torch.stack([q.kl(p) for q, p in zip(posteriors, priors_, strict=True)], dim=1)
        return LatentDraw(pack_latents(zs), kl), h, feats

    def posterior_draw(self, images: Tensor, mask: Tensor) -> LatentDraw:
        return self.reconstruction(images, mask)[0]

    def latent_shapes(self, size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        """Level l (coarsest first): (latent_dims[l], H / 2^(n-1-l), W / 2^(n-1-l)) for n levels."""
        return self.prior_net.latent_shapes(size)


def top_k_mask(
    ce: Tensor, fraction: float, *, stochastic: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """0/1 mask shaped like the per-pixel losses `ce` [B, ...] keeping k = floor(fraction x numel)
    pixels of the whole batch (at least 1).

    Deterministic: the k largest. Stochastic: k pixels drawn without replacement with probability
    proportional to their loss (Gumbel top-k: log loss + standard Gumbel noise, the k largest).
    """
    flat = ce.detach().flatten()
    k = max(1, math.floor(flat.numel() * fraction))
    score = flat.log()
    if stochastic:
        score = score - torch.empty_like(flat).exponential_(generator=generator).log()  # -log Exp(1) is Gumbel(0, 1)
    keep = torch.zeros_like(flat).scatter_(0, score.topk(k).indices, 1.0)
    return keep.view_as(ce)


def _inverse_squared_softplus(value: float) -> float:
    """w with softplus(w)^2 = value (> 0)."""
    return math.log(math.expm1(math.sqrt(value)))


class Geco(nn.Module):
    """GECO's constrained objective as in the public HPU-Net code:
    `loss = lambda * (MA(rec) - kappa * pixels) + kl`.

    MA is a moving average of the reconstruction loss (its first value, then
    `decay * MA + (1 - decay) * rec`, updated in training only) that passes gradients to the
    current `rec` as if it were `rec`. lambda = softplus(w)^2 starts at 1; the gradient reaching w
    is scaled by `-rate`, so the optimiser that minimises the loss in the networks' weights
    raises lambda while the constraint is violated (> 0) and lowers it once it holds.
    """

    average: Tensor  # buffers: the moving average and how many times it was updated
    updates: Tensor

    def __init__(self, *, kappa: float = 0.05, decay: float = 0.99, rate: float = 1e-2) -> None:
        super().__init__()
        self.kappa, self.decay, self.rate = float(kappa), float(decay), float(rate)
        self.raw = nn.Parameter(torch.tensor(_inverse_squared_softplus(1.0)))
        self.register_buffer("average", torch.zeros(()))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def multiplier(self) -> Tensor:
        """lambda, without gradient."""
        return F.softplus(self.raw.detach()).square()

    def forward(self, rec: Tensor, pixels: Tensor | float, kl: Tensor) -> dict[str, Tensor]:
        """`rec`: reconstruction loss (a scalar); `pixels`: pixels it sums over per image; `kl`: the KL term."""
        if self.training and torch.is_grad_enabled():
            value = rec.detach().to(self.average.dtype)
            self.average.copy_(value if self.updates == 0 else self.decay * self.average + (1 - self.decay) * value)
            self.updates += 1
        average = self.average.to(rec.dtype) if self.updates > 0 else rec.detach()
        constraint = rec + (average - rec).detach() - self.kappa * pixels
        lam = F.softplus(self.raw).square()
        lam = lam.detach() - self.rate * (lam - lam.detach())  # value lambda, gradient scaled by -rate
        return {"loss": lam * constraint + kl, "constraint": constraint.detach(), "lagmul": lam.detach()}


@transports.register("hpunet-decoder")
class HPUNetDecoder(Transport):
    """The residual U-Net's finer decoder levels and logits, after the prior's latent levels.

    Its prior must be `hpunet-latent`: it continues that prior's U-Net, reading its encoder
    features and re-running its latent levels on each z (`with_prior`), and trains on its
    `reconstruction`. The layers are built when composed, sized by the prior.

    Args:
        top_k: fraction of the batch's pixels the cross-entropy keeps (0.02 in the public code);
            1 keeps every pixel (top-k off).
        stochastic_top_k: draw the kept pixels with probability proportional to their loss
            (True, the code's default) or keep the largest.
        geco: GECO's constrained objective (True, the code's default); False gives the ELBO
            `CE + beta KL`.
        kappa: GECO's bound on the mean cross-entropy per kept pixel (0.05).
        decay: GECO's moving-average decay (0.99).
        rate: GECO's step-size factor of the Lagrange multiplier's gradient (1e-2).
        beta: KL weight of the ELBO (without GECO).
    """

    accepts = frozenset({"latent"})

    kind = "map"
    joint = True
    default_training = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 2e-5, "batch_size": 32}

    def __init__(
        self,
        *,
        top_k: float = 0.02,
        stochastic_top_k: bool = True,
        geco: bool = True,
        kappa: float = 0.05,
        decay: float = 0.99,
        rate: float = 1e-2,
        beta: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0.0 < float(top_k) <= 1.0:
            raise ConfigError(f"hpunet-decoder: top_k is a fraction of pixels in (0, 1] (1: every pixel), got {top_k}")
        if not 0.0 <= float(decay) < 1.0 or float(kappa) < 0 or float(rate) < 0:
            raise ConfigError(
                f"hpunet-decoder: needs 0 <= decay < 1, kappa >= 0 and rate >= 0, got decay={decay}, "
                f"kappa={kappa}, rate={rate}"
            )
        self.top_k, self.stochastic_top_k, self.beta = float(top_k), bool(stochastic_top_k), float(beta)
        self.geco = Geco(kappa=kappa, decay=decay, rate=rate) if geco else None
        self.stages: nn.ModuleList | None = None
        self.head: nn.Conv2d | None = None

    @staticmethod
    def _hpunet(prior: Prior) -> HPUNetLatent:
        if not isinstance(prior, HPUNetLatent):
            raise CompatibilityError(
                f"transport hpunet-decoder continues the U-Net of its prior, which must be 'hpunet-latent', "
                f"got {type(prior).__name__}"
            )
        return prior

    def check_prior(self, prior: Prior) -> None:
        """Refuse any prior but `hpunet-latent`; build the finer decoder levels for its U-Net."""
        net = self._hpunet(prior)
        if self.stages is not None:
            return
        rev, start = net.channels[::-1], len(net.latent_dims) + 1
        self.stages = nn.ModuleList(
            _stage(rev[lvl - 1] + rev[lvl], rev[lvl], blocks=net.blocks, convs=net.convs)
            for lvl in range(start, len(rev))
        )
        self.head = nn.Conv2d(rev[-1], 1, 1)
        _init(self)
        ref = next(prior.parameters(), None)
        if ref is not None:
            self.to(ref.device, ref.dtype)

    def logits(self, h: Tensor, feats: list[Tensor]) -> Tensor:
        """Logits [N, 1, H, W] from the decoder features after the latent levels `h` and the
        encoder features `feats` (finest first)."""
        if self.stages is None or self.head is None:
            raise CompatibilityError("hpunet-decoder is sized by its prior: compose it with 'hpunet-latent'")
        n = len(self.stages)
        for i, stage in enumerate(self.stages):
            h = stage(torch.cat([_up(h), feats[n - 1 - i]], dim=1))
        return self.head(h)

    def condition(self, images: Tensor) -> None:
        """Nothing of its own: it reads the prior's encoder features (`with_prior`)."""
        return None

    def with_prior(self, cond: Any, prior: Prior, state: list[Tensor]) -> tuple[list[Tensor], HierarchicalCore]:
        """The prior's encoder features and its U-Net, whose latent levels decode each z."""
        return list(state), self._hpunet(prior).prior_net

    def forward(self, x: Tensor, t: Tensor | None, cond: tuple[list[Tensor], HierarchicalCore]) -> Tensor:
        """Logits [N, 1, H, W] of packed latents `x` [N, D]; `cond` is `with_prior`'s (per sample)."""
        feats, core = cond
        zs = unpack_latents(x, core.latent_shapes((feats[0].shape[-2], feats[0].shape[-1])))
        _, _, h = core.decode(feats, given=zs)
        return self.logits(h, feats)

    def to_probs(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x.squeeze(1))

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """GECO (or ELBO) on the (top-k) cross-entropy of one annotation per image and the KL summed
        over levels; CE and KL are sums per image, batch means."""
        image, masks = unpack_batch(batch)
        target = pick_annotator(masks)
        draw, h, feats = self._hpunet(prior).reconstruction(image, target)
        ce = F.binary_cross_entropy_with_logits(self.logits(h, feats), target, reduction="none")
        keep = top_k_mask(ce, self.top_k, stochastic=self.stochastic_top_k) if self.top_k < 1 else None
        rec = (ce if keep is None else keep * ce).flatten(1).sum(1).mean()
        pixels = float(ce[0].numel()) if keep is None else keep.flatten(1).sum(1).mean()
        kl = draw.kl.sum(1).mean()
        terms = {"ce": rec, "kl": kl, "kl_levels": draw.kl.mean(0).detach()}
        if self.geco is None:
            return {"loss": rec + self.beta * kl, **terms}
        return {**self.geco(rec, pixels, kl), **terms}


_SMOKE_NET = {"channels": (4, 8, 8, 8), "latent_dims": (1, 1), "blocks_per_level": 1, "convs_per_block": 2}
# CPU: the paper's depth (3 blocks of 3 convs per level) at a fifth of its width (base 5, not 24),
# about PHiSeg's cpu parameter count (0.75 M) and step cost at 64 px
_CPU_NET = {"base_channels": 5}
_CPU_TRAIN = {"lr": 1e-3, "batch_size": 12}
_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "prior": _SMOKE_NET,
        "train": {"joint": {"steps": 2, "batch_size": 4, "val_images": 2, "val_samples": 2}},
    },
    "cpu": {"prior": _CPU_NET, "train": {"joint": {**_CPU_TRAIN, "steps": 1000, "val_images": 8, "val_samples": 8}}},
    "cpu-lidc": {
        "prior": _CPU_NET,
        "train": {"joint": {**_CPU_TRAIN, "steps": 2000, "val_every": 250, "val_images": 48, "val_samples": 16}},
    },
    "paper-lidc": {"in_channels": 1, "image_size": 128, "train": {"joint": {"batch_size": 32, "steps": 240_000}}},
}

RECIPE = register_recipe(
    Recipe(
        name="hpunet",
        prior={"name": "hpunet-latent"},
        transport={"name": "hpunet-decoder"},
        sampler={"name": "direct"},
        stages=("joint",),
        train={"joint": {"optimizer": "adam", "lr": 1e-4, "weight_decay": 2e-5, "batch_size": 32, "steps": 240_000}},
        presets=with_lidc_v2(_PRESETS, {"joint": 3.0}),
        aliases=("hierarchical-probunet", "hpu-net"),
        description="Hierarchical Prob. U-Net (Kohl et al., 2019): latents at the coarse decoder scales, GECO + top-k",
    )
)
