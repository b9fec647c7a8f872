"""The lidc-v2 training budget: one rule that turns a method's `cpu-lidc` preset into its
`cpu-lidc-v2` preset, so every method fills the same 40 minutes on 2 cores the same way.

The rule, per training stage: `steps` times the method's factor (chosen from the measured cost of
a step, docs/training-speed.md, so training plus validation stays near 25 minutes on one thread,
the lidc-v2 track's worker); warm-up over 100 steps then cosine decay; checkpoints selected on
200 validation slices about six times per stage, a tie going to the later step
(`select="last-best"`). Networks, batch sizes, samplers and learning rates stay the `cpu-lidc`
preset's. No moving average of the weights (`ema`): on the GTR at 3,000 steps it validated
worse than the plain weights. The evidence behind each setting is in docs/training.md ("The
lidc-v2 budget").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["V2", "V2_SCHEDULE", "VAL_IMAGES", "VALIDATIONS", "with_lidc_v2"]

V2 = "cpu-lidc-v2"
V2_SCHEDULE: dict[str, Any] = {"schedule": "cosine", "warmup": 100, "select": "last-best"}
VAL_IMAGES = 200  # validation slices per check (the cpu-v2 bench preset's validation split)
VALIDATIONS = 6  # validation checks per stage


def _val_every(steps: int) -> int:
    """About `VALIDATIONS` checks per stage, at a multiple of 50 steps."""
    return max(50, round(steps / VALIDATIONS / 50) * 50)


def with_lidc_v2(
    presets: Mapping[str, dict[str, Any]],
    factors: Mapping[str, float],
    *,
    stage_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """`presets` plus (or with a new) `cpu-lidc-v2`, derived from its `cpu-lidc` by the budget rule.

    `factors`: how many times longer each stage trains (every stage of the preset must be named);
    `stage_options`: per-stage settings that replace the rule's (e.g. fewer validation samples
    where a sample costs many network evaluations).
    """
    base = presets["cpu-lidc"]
    out = {name: preset for name, preset in presets.items() if name != V2}
    v2 = copy.deepcopy(base)
    stages = v2.get("train", {})
    missing = set(stages) - set(factors)
    if missing:
        raise ValueError(f"with_lidc_v2: no factor for stage(s) {sorted(missing)}")
    for stage, cfg in stages.items():
        if "steps" not in cfg:
            raise ValueError(f"with_lidc_v2: cpu-lidc stage '{stage}' counts epochs, not steps")
        steps = round(cfg["steps"] * factors[stage])
        cfg.update(V2_SCHEDULE, steps=steps, val_every=_val_every(steps), val_images=VAL_IMAGES)
        cfg.update((stage_options or {}).get(stage, {}))
    out[V2] = v2
    return out
