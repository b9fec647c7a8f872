"""`tdpm`: a truncated diffusion model composed from existing parts, no new component.

The GTR prior (stage "prior") gives a mask estimate; the conditional diffusion transport
`cond-ddpm` (CIMD's denoiser without its ambiguity latent), truncated at step k, diffuses that estimate to x_k
and denoises from k to 0 (stage "transport" trains the denoiser on steps 1..k only). This is
the truncated-diffusion idea (Zheng et al., ICLR 2023) that ATFM starts from. The GTR stage of
every preset is ATFM's, so `tdpm` and `atfm` differ only in what carries the GTR sample.
"""

from __future__ import annotations

from typing import Any

from ..recipes import Recipe, register_recipe
from . import cimd, gtr  # noqa: F401  (register the components this recipe names)
from .atfm import V2_FLOW_FACTOR, V2_GTR_FACTOR
from .atfm import presets as atfm_presets
from .budget import with_lidc_v2

__all__ = ["RECIPE"]

_DIFFUSION: dict[str, dict[str, Any]] = {
    "smoke": {
        "transport": {"steps": 25, "truncation": 8, "width": 8, "mults": (1, 2), "blocks": 1, "attention": False},
        "sampler": {"name": "ddim", "steps": 4},
        "train": {"steps": 2, "batch_size": 4, "val_images": 2, "val_samples": 2},
    },
    "cpu": {
        "transport": {"steps": 100, "truncation": 30, "width": 16, "mults": (1, 2, 4), "blocks": 1, "attention": False},
        "sampler": {"name": "ddim", "steps": 10},
        "train": {"lr": 1e-3, "steps": 1200, "batch_size": 8, "val_images": 4, "val_samples": 4},
    },
    "paper-lidc": {"train": {"epochs": 200}},
    "paper-isic3": {"train": {"epochs": 120}},
}
# LIDC: ATFM's cpu-lidc GTR; the denoiser at ATFM's cpu-lidc ST-Net width, trained as long
_DIFFUSION["cpu-lidc"] = {
    "transport": {
        "steps": 100,
        "truncation": 30,
        "width": 8,
        "mults": (1, 2, 4),
        "blocks": 1,
        "groups": 4,
        "attention": False,
    },
    "sampler": {"name": "ddim", "steps": 5},
    "train": {"lr": 1e-3, "steps": 1000, "batch_size": 8, "val_every": 250, "val_images": 48, "val_samples": 16},
}


def _presets() -> dict[str, dict[str, Any]]:
    """ATFM's GTR-stage preset plus this recipe's diffusion transport, sampler and training."""
    out = {k: v for k, v in atfm_presets(prior=True, transport=False, flow=False).items() if k in _DIFFUSION}
    for name, preset in out.items():
        diffusion = _DIFFUSION[name]
        preset.update({k: v for k, v in diffusion.items() if k != "train"})
        preset["train"]["transport"] = dict(diffusion["train"])
    # lidc-v2: ATFM's GTR stage, and the denoiser as long as ATFM's flow (ambiseg.methods.budget)
    return with_lidc_v2(out, {"prior": V2_GTR_FACTOR, "transport": V2_FLOW_FACTOR})


RECIPE = register_recipe(
    Recipe(
        name="tdpm",
        prior={"name": "gtr"},
        transport={"name": "cond-ddpm", "truncation": 300},
        sampler={"name": "ddpm"},
        stages=("prior", "transport"),
        train={
            "prior": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 1e-4, "batch_size": 16, "epochs": 1000},
            "transport": {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.0, "batch_size": 8, "epochs": 200},
        },
        presets=_presets(),
        description="Truncated diffusion = GTR prior + a conditional DDPM denoiser started at step k (a composition)",
    )
)
