"""PHiSeg (Baumgartner et al., "PHiSeg: Capturing Uncertainty in Medical Image Segmentation",
MICCAI 2019) as a prior (`phiseg-latent`) and a map transport (`phiseg-likelihood`).

Spatial latents at L levels, sampled coarse to fine: each level's Gaussian is computed from
the encoder features at its resolution and the (upsampled) sample of the level below. The
likelihood turns every z into logits at full resolution; a segmentation is the sum of all
levels' logits. Training (one stage, "joint") uses posterior samples everywhere, including as
the prior's coarser inputs, with the CE of the accumulated logits of levels >= l for every l
and KLs weighted 4^l (finest 1).

Level count: at 128 px the paper uses R = 7 resolution levels (128 ... 2) and L = 5 latent
levels (32 ... 2). For another size, R = 1 + the number of halvings that keep the side an
integer >= 2 (so the coarsest level is 2 x 2 for powers of two) and L = min(5, R - 2), i.e.
the finest latent stays at 1/4 of the image: 64 px -> (6, 4), 32 px -> (5, 3), 256 px -> (8, 5).

The likelihood reads its prior through the `LatentPrior` interface only: the level counts and
latent channels are declared once, on the prior, and the likelihood sizes itself from the
prior's `latent_shapes` when composed (any prior of such spatial levels feeds it).
"""

from __future__ import annotations

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

__all__ = ["phiseg_levels", "HierarchicalEncoder", "PHiSegLatent", "PHiSegLikelihood", "RECIPE"]

PAPER_SIZE = 128
MAX_LATENT_LEVELS = 5


def phiseg_levels(
    image_size: int | None, resolution_levels: int | None = None, latent_levels: int | None = None
) -> tuple[int, int]:
    """(R, L) for square images of side `image_size` (128 when None), unless given explicitly."""
    size = PAPER_SIZE if image_size is None else int(image_size)
    halvings = 0
    while size % 2 ** (halvings + 1) == 0 and size // 2 ** (halvings + 1) >= 2:
        halvings += 1
    r = int(resolution_levels) if resolution_levels is not None else halvings + 1
    lat = int(latent_levels) if latent_levels is not None else min(MAX_LATENT_LEVELS, max(r - 2, 1))
    if r < 1 or not 1 <= lat <= r:
        raise ConfigError(
            f"phiseg needs 1 <= latent_levels <= resolution_levels, got latent_levels={lat}, "
            f"resolution_levels={r} (image_size={image_size}); images need a side divisible by 4"
        )
    return r, lat


def _widths(base: int, levels: int) -> list[int]:
    """The paper's channel plan n0 * (1, 2, 4, 6, 6, ...), one entry per resolution level."""
    return [base * m for m in (1, 2, 4)][:levels] + [6 * base] * max(levels - 3, 0)


def _conv(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv + batch norm + ReLU (the unit of every PHiSeg net)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


_SIZE_HINT = "set image_size to the data's size (levels follow it) or resize the images"


def _check_size(h: int, w: int, levels: int) -> None:
    factor = 2 ** (levels - 1)
    if h % factor or w % factor:
        raise ConfigError(
            f"phiseg with {levels} resolution levels needs H and W divisible by {factor}, got {(h, w)}; {_SIZE_HINT}"
        )


class HierarchicalEncoder(nn.Module):
    """PHiSeg prior or posterior net: encoder features, then Gaussians over z_{L-1} ... z_0.

    Level i (0 finest) has z_i [N, latent_channels, H / 2^(i+R-L), W / 2^(i+R-L)].
    """

    def __init__(
        self, in_channels: int, *, resolution_levels: int, latent_levels: int, base_width: int, latent_channels: int
    ) -> None:
        super().__init__()
        r, lat, zc = resolution_levels, latent_levels, latent_channels
        self.r, self.l, self.zc = r, lat, zc
        widths = _widths(base_width, r)
        chans = [in_channels, *widths]
        self.pre = nn.ModuleList(
            nn.Sequential(*(_conv(chans[i] if j == 0 else widths[i], widths[i]) for j in range(3))) for i in range(r)
        )
        top = widths[r - 1]
        self.top_mu = nn.Conv2d(top, zc, 3, padding=1)
        self.top_sigma = nn.Conv2d(top, zc, 1)
        ups = zc * base_width
        self.ups = nn.ModuleList(nn.Sequential(_conv(zc, ups), _conv(ups, ups)) for _ in range(lat - 1))
        self.inputs = nn.ModuleList(
            nn.Sequential(_conv(widths[i + r - lat] + ups, widths[i]), _conv(widths[i], widths[i]))
            for i in range(lat - 1)
        )
        self.mu = nn.ModuleList(nn.Conv2d(widths[i], zc, 1) for i in range(lat - 1))
        self.sigma = nn.ModuleList(nn.Conv2d(widths[i], zc, 1) for i in range(lat - 1))

    def features(self, x: Tensor) -> list[Tensor]:
        """Encoder features at the L latent resolutions, finest first (image-only work)."""
        feats = encode_levels(self.pre, x, owner="phiseg", hint=_SIZE_HINT)
        return feats[self.r - self.l :]

    def latents(
        self, feats: list[Tensor], *, given: list[Tensor] | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[DiagonalGaussian]]:
        """Samples z_i and their Gaussians, finest first, drawn coarse to fine.

        Each level conditions on the level below: on `given[i+1]` when given (training: the
        posterior's samples feed the prior), otherwise on this net's own sample.
        """
        zs: list[Tensor] = []
        dists: list[DiagonalGaussian] = []
        for i in reversed(range(self.l)):
            if i == self.l - 1:
                mu, s = self.top_mu(feats[i]), self.top_sigma(feats[i])
            else:
                below = given[i + 1] if given is not None else zs[0]
                h = self.inputs[i](torch.cat([feats[i], self.ups[i](_up(below))], dim=1))
                mu, s = self.mu[i](h), self.sigma[i](h)
            dists.insert(0, DiagonalGaussian(mu, torch.log(F.softplus(s) + 1e-10)))
            zs.insert(0, dists[0].rsample(generator=generator))
        return zs, dists


def _net_options(
    image_size: int | None,
    resolution_levels: int | None,
    latent_levels: int | None,
    base_width: int,
    latent_channels: int,
) -> dict[str, int]:
    """The level counts and widths a `phiseg-latent` / `phiseg-likelihood` pair must share."""
    r, lat = phiseg_levels(image_size, resolution_levels, latent_levels)
    if int(base_width) < 1 or int(latent_channels) < 1:
        raise ConfigError(f"phiseg: base_width and latent_channels must be >= 1, got {base_width}, {latent_channels}")
    return {
        "resolution_levels": r,
        "latent_levels": lat,
        "base_width": int(base_width),
        "latent_channels": int(latent_channels),
    }


@priors.register("phiseg-latent")
class PHiSegLatent(LatentPrior):
    """Hierarchical spatial latents: prior net on the image, posterior net on image + (mask - 0.5).

    A state is all levels' z flattened and concatenated (finest first): [N, sum_i C h_i w_i].

    Args:
        in_channels: image channels.
        image_size: image side; sets the level counts (see the module docstring).
        resolution_levels, latent_levels: explicit R and L (None: from `image_size`).
        base_width: n0 of the channel plan n0 * (1, 2, 4, 6, 6, 6, 6) (32 in the paper).
        latent_channels: channels of every z (2 in the paper).
    """

    draws = "latent"

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int | None = None,
        resolution_levels: int | None = None,
        latent_levels: int | None = None,
        base_width: int = 32,
        latent_channels: int = 2,
    ) -> None:
        super().__init__()
        self.options = _net_options(image_size, resolution_levels, latent_levels, base_width, latent_channels)
        self.r, self.l, self.zc = (self.options[k] for k in ("resolution_levels", "latent_levels", "latent_channels"))
        self.prior_net = HierarchicalEncoder(in_channels, **self.options)
        self.posterior_net = HierarchicalEncoder(in_channels + 1, **self.options)

    def condition(self, images: Tensor) -> list[Tensor]:
        return self.prior_net.features(images)

    def sample(self, state: list[Tensor], num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Packed z ~ p(z | image): [B, num_samples, D]."""
        feats = [f.repeat_interleave(num_samples, dim=0) for f in state]
        zs, _ = self.prior_net.latents(feats, generator=generator)
        return rearrange(pack_latents(zs), "(b n) d -> b n d", n=num_samples)

    def posterior(self, images: Tensor, mask: Tensor) -> tuple[list[Tensor], list[DiagonalGaussian]]:
        """Posterior samples and Gaussians per level (finest first) for `mask` [B, 1, H, W]."""
        return self.posterior_net.latents(self.posterior_net.features(torch.cat([images, mask - 0.5], dim=1)))

    def prior_given(self, images: Tensor, zs: list[Tensor]) -> list[DiagonalGaussian]:
        """Prior Gaussians per level when each level conditions on the given coarser samples `zs`."""
        return self.prior_net.latents(self.prior_net.features(images), given=zs)[1]

    def posterior_draw(self, images: Tensor, mask: Tensor) -> LatentDraw:
        """Packed posterior z [B, D] and KL [B, L] per level (finest first) against the prior
        conditioned on the posterior's coarser samples."""
        zs, posteriors = self.posterior(images, mask)
        priors_ = self.prior_given(images, zs)
        kl = torch.stack([q.kl(p) for q, p in zip(posteriors, priors_, strict=True)], dim=1)
        return LatentDraw(pack_latents(zs), kl)

    def latent_shapes(self, size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        """Level i (finest first) is [latent_channels, H / 2^(i+R-L), W / 2^(i+R-L)]."""
        h, w = size
        _check_size(h, w, self.r)
        return tuple((self.zc, h >> (i + self.r - self.l), w >> (i + self.r - self.l)) for i in range(self.l))


def pack_latents(zs: list[Tensor]) -> Tensor:
    """Per-level latents [N, C, h_i, w_i] -> one flat state [N, sum_i C h_i w_i]."""
    return torch.cat([z.flatten(1) for z in zs], dim=1)


@transports.register("phiseg-likelihood")
class PHiSegLikelihood(Transport):
    """Likelihood net: latents of every level -> per-level logits at full resolution, summed.

    Its prior is any `LatentPrior` whose levels are spatial, finest first, each half the size of
    the one before: [C, H / 2^(i+k), W / 2^(i+k)] (`phiseg-latent`: k = R - L). The nets are
    built when composed, sized by the prior's `latent_shapes`; it trains on `posterior_draw`.

    Args:
        in_channels: image channels (unused: the likelihood sees only latents).
        image_size: image side at which the prior's latent shapes are read (128 when None).
        resolution_levels, latent_levels, latent_channels: None (default) follows the prior; a
            value must match it (kept so that configs that give them still load).
        base_width: n0 of the likelihood's channel plan (None: the prior's when it is a
            `phiseg-latent`, else 32).
    """

    accepts = frozenset({"latent"})

    kind = "map"
    joint = True
    default_training = {"optimizer": "adam", "lr": 1e-3, "batch_size": 12}

    def __init__(
        self,
        *,
        in_channels: int = 1,
        image_size: int | None = None,
        resolution_levels: int | None = None,
        latent_levels: int | None = None,
        base_width: int | None = None,
        latent_channels: int | None = None,
    ) -> None:
        super().__init__()
        given = {"resolution_levels": resolution_levels, "latent_levels": latent_levels}
        given |= {"base_width": base_width, "latent_channels": latent_channels}
        for key, value in given.items():
            if value is not None and int(value) < 1:
                raise ConfigError(f"phiseg-likelihood: {key} must be >= 1 (or None: the prior's), got {value}")
        self.given = {k: int(v) for k, v in given.items() if v is not None}
        self.size = PAPER_SIZE if image_size is None else int(image_size)
        self.options: dict[str, int] | None = None  # the built nets' sizes (set when composed)

    def _build(self, r: int, lat: int, zc: int, base_width: int) -> None:
        """The likelihood nets for R resolution and L latent levels of `zc` channels."""
        self.options = {"resolution_levels": r, "latent_levels": lat, "base_width": base_width, "latent_channels": zc}
        self.r, self.l, self.zc = r, lat, zc
        widths = _widths(base_width, r)
        self.post_z = nn.ModuleList(
            nn.Sequential(
                _conv(zc, widths[i]),
                _conv(widths[i], widths[i]),
                *(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(widths[i], widths[i])
                    )
                    for _ in range(r - lat)
                ),
            )
            for i in range(lat)
        )
        out = [widths[i + r - lat] for i in range(lat - 1)] + [widths[lat - 1]]
        self.post_ups = nn.ModuleList(_conv(out[i + 1], widths[i]) for i in range(lat - 1))
        self.post_c = nn.ModuleList(
            nn.Sequential(_conv(2 * widths[i], out[i]), _conv(out[i], out[i])) for i in range(lat - 1)
        )
        self.heads = nn.ModuleList(nn.Conv2d(out[i], 1, 1) for i in range(lat))

    @staticmethod
    def _latent(prior: Prior) -> LatentPrior:
        """`prior` as a latent prior with a posterior this transport trains on, or a `CompatibilityError`."""
        if not isinstance(prior, LatentPrior):
            raise CompatibilityError(
                f"transport phiseg-likelihood decodes hierarchical latents; it needs a LatentPrior such as "
                f"'phiseg-latent', got {type(prior).__name__}"
            )
        return prior

    def _levels(self, prior: LatentPrior) -> dict[str, int]:
        """R, L and C of the prior's latents, read from its `latent_shapes` at `image_size`."""
        shapes = tuple(tuple(int(n) for n in shape) for shape in prior.latent_shapes((self.size, self.size)))
        lat = len(shapes)
        zc, side = (shapes[0][0], shapes[0][1]) if lat and len(shapes[0]) == 3 else (0, 0)
        k = (self.size // side).bit_length() - 1 if 0 < side <= self.size else 0  # finest level at H / 2^k
        want = tuple((zc, self.size >> (i + k), self.size >> (i + k)) for i in range(lat))
        if zc < 1 or side << k != self.size or shapes != want or self.size >> (lat - 1 + k) < 1:
            raise CompatibilityError(
                f"transport phiseg-likelihood decodes spatial latent levels [C, H/2^(i+k), W/2^(i+k)] (finest "
                f"first), but prior {type(prior).__name__} draws {list(shapes)} for {self.size} px images; pair it "
                "with a prior of hierarchical latents such as 'phiseg-latent'"
            )
        return {"resolution_levels": lat + k, "latent_levels": lat, "latent_channels": zc}

    def check_prior(self, prior: Prior) -> None:
        """Refuse a prior that is not a `LatentPrior` of fitting spatial levels (or that contradicts
        the level options given here); build the nets for its levels when not built yet."""
        found = self._levels(self._latent(prior))
        wrong = {k: v for k, v in {**self.given, **(self.options or {})}.items() if k in found and found[k] != v}
        if wrong:
            raise CompatibilityError(
                f"phiseg-likelihood has {wrong} but its prior's latents have "
                f"{ {k: found[k] for k in wrong} }; leave these options unset on phiseg-likelihood (it follows the "
                "prior) or give both the same image_size, levels and latent_channels"
            )
        if self.options is None:
            base = self.given.get("base_width", prior.options["base_width"] if isinstance(prior, PHiSegLatent) else 32)
            self._build(found["resolution_levels"], found["latent_levels"], found["latent_channels"], base)
            ref = next(prior.parameters(), None)
            if ref is not None:
                self.to(ref.device, ref.dtype)

    def _built(self) -> None:
        if self.options is None:
            raise CompatibilityError(
                "phiseg-likelihood takes its levels from its prior: compose it with one (ambiseg.compose)"
            )

    def condition(self, images: Tensor) -> tuple[int, int]:
        self._built()
        _check_size(images.shape[-2], images.shape[-1], self.r)
        return int(images.shape[-2]), int(images.shape[-1])

    def unpack(self, x: Tensor, size: tuple[int, int]) -> list[Tensor]:
        """Flat states [N, D] -> per-level latents [N, C, h_i, w_i], finest first."""
        self._built()
        h, w = size
        shapes = [(h >> (i + self.r - self.l), w >> (i + self.r - self.l)) for i in range(self.l)]
        sizes = [self.zc * a * b for a, b in shapes]
        if sum(sizes) != x.shape[1]:
            raise ConfigError(
                f"phiseg state of size {x.shape[1]} does not fit images of size {size} "
                f"(expected {sum(sizes)}); sample with images of the size the latents came from"
            )
        parts = x.split(sizes, dim=1)
        return [
            rearrange(p, "n (c a b) -> n c a b", c=self.zc, a=a, b=b) for p, (a, b) in zip(parts, shapes, strict=True)
        ]

    def decode(self, zs: list[Tensor], size: tuple[int, int]) -> list[Tensor]:
        """Per-level logits [N, 1, H, W] (finest first), each resized to full resolution."""
        post_z = [block(z) for block, z in zip(self.post_z, zs, strict=True)]
        post_c = [post_z[-1]] * self.l
        for i in reversed(range(self.l - 1)):
            below = self.post_ups[i](_up(post_c[i + 1]))
            post_c[i] = self.post_c[i](torch.cat([post_z[i], below], dim=1))
        return [F.interpolate(head(c), size=size, mode="nearest") for head, c in zip(self.heads, post_c, strict=True)]

    def forward(self, x: Tensor, t: Tensor | None, cond: tuple[int, int]) -> Tensor:
        """Summed logits [N, 1, H, W] of packed latents `x` [N, D]; `cond` is the image size (H, W)."""
        return torch.stack(self.decode(self.unpack(x, cond), cond)).sum(0)

    def to_probs(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x.squeeze(1))

    def loss(self, batch: dict[str, Tensor], prior: Prior) -> dict[str, Tensor]:
        """sum_l CE(sum_{k >= l} logits_k) + sum_l 4^l KL_l, CE summed over pixels, batch means."""
        image, masks = unpack_batch(batch)
        target = pick_annotator(masks)
        size = (image.shape[-2], image.shape[-1])
        draw = self._latent(prior).posterior_draw(image, target)
        logits = self.decode(self.unpack(draw.z, size), size)
        accumulated = torch.stack(logits).flip(0).cumsum(0).flip(0)
        ce_levels = torch.stack(
            [
                F.binary_cross_entropy_with_logits(a, target, reduction="none").flatten(1).sum(1).mean()
                for a in accumulated
            ]
        )
        kl_levels = torch.stack([kl.mean() for kl in draw.kl.unbind(1)])
        weights = 4.0 ** torch.arange(self.l, device=kl_levels.device, dtype=kl_levels.dtype)
        kl = (weights * kl_levels).sum()
        return {"loss": ce_levels.sum() + kl, "ce": ce_levels[0], "kl": kl, "kl_unweighted": kl_levels.sum()}


_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "prior": {"base_width": 4, "resolution_levels": 3, "latent_levels": 2},  # the likelihood follows
        "train": {"joint": {"steps": 2, "batch_size": 4, "val_images": 2, "val_samples": 2}},
    },
    "cpu": {
        "prior": {"base_width": 8},
        "train": {"joint": {"steps": 1000, "batch_size": 12, "val_images": 8, "val_samples": 8}},
    },
    # LIDC on 2 CPU cores (64 px crops, 4 latent levels); validation curve in docs/training.md
    "cpu-lidc": {
        "prior": {"base_width": 8},
        "train": {"joint": {"steps": 2000, "batch_size": 12, "val_every": 250, "val_images": 48, "val_samples": 16}},
    },
    "paper-lidc": {"in_channels": 1, "image_size": 128, "train": {"joint": {"batch_size": 12, "epochs": 100}}},
    "paper-isic3": {"in_channels": 3, "image_size": 256, "train": {"joint": {"batch_size": 12, "epochs": 400}}},
}

RECIPE = register_recipe(
    Recipe(
        name="phiseg",
        prior={"name": "phiseg-latent"},
        transport={"name": "phiseg-likelihood"},
        sampler={"name": "direct"},
        stages=("joint",),
        train={"joint": {"optimizer": "adam", "lr": 1e-3, "batch_size": 12, "epochs": 100}},
        presets=with_lidc_v2(_PRESETS, {"joint": 2.5}),
        description="PHiSeg (Baumgartner et al., MICCAI 2019): hierarchical spatial latents, summed per-level logits",
    )
)
