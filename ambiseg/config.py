"""A method's config: the per-stage training options and how overrides merge into a config.

A method config is a nested, JSON-safe dict::

    {"method": "atfm", "prior": {"name": "gtr", ...}, "transport": {"name": "sfm", ...},
     "sampler": {"name": "euler", "steps": 25}, "stages": ["prior", "transport"],
     "train": {"prior": {...}, "transport": {...}}, "in_channels": 1, "image_size": null,
     "max_batch": 64}

`StageTraining` types and checks one stage's `train.<stage>` options; `apply_overrides` applies
CLI-style dotted keys (`{"prior.rank": 5}`) to a config. Nothing here builds a module.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

from .errors import ConfigError, closest
from .registry import coerce

__all__ = [
    "StageTraining",
    "apply_overrides",
    "STAGES",
    "CONFIG_KEYS",
    "DATA_KEYS",
    "ROLES",
    "SCHEDULES",
    "SELECTIONS",
    "DEFAULT_TRAINING",
]

STAGES = ("prior", "transport", "joint")
CONFIG_KEYS = ("method", "prior", "transport", "sampler", "stages", "train", "in_channels", "image_size", "max_batch")
DATA_KEYS = ("in_channels", "image_size")
ROLES = ("prior", "transport", "sampler")


SCHEDULES = ("constant", "cosine", "linear")
SELECTIONS = ("first-best", "last-best")  # which of equally good validation checkpoints a stage keeps


@dataclasses.dataclass(frozen=True)
class StageTraining:
    """One stage's training options, `train.<stage>.<key>` in a method config.

    `steps` (optimiser steps) overrides `epochs` when set; `accumulate` splits each batch into
    that many micro-batches; `val_images`/`val_samples` size the validation, which runs at every
    epoch end, or every `val_every` steps when set (and at the stage's last step).
    `schedule` shapes the learning rate over the stage ("constant", "cosine" or "linear" decay to
    `min_lr`), after `warmup` steps of linear warm-up from 0; it is a function of the step alone,
    so a resumed run follows the same curve. `select` picks the checkpoint a stage ends with among
    equal validation scores: "first-best" keeps the earliest, "last-best" the latest (more trained)
    step. `ema` (a decay in [0, 1), e.g. 0.999) keeps an exponential moving average of the stage's
    weights (`torch.optim.swa_utils`); validation, the best checkpoint and the stage's final
    weights are the average's.
    """

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 8
    grad_clip: float | None = None
    val_images: int = 8
    val_samples: int = 8
    val_every: int | None = None
    accumulate: int = 1
    schedule: str = "constant"
    warmup: int = 0
    min_lr: float = 0.0
    select: str = "first-best"
    ema: float | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, stage: str) -> StageTraining:
        """Typed options from a dict (CLI strings coerced); unknown keys and bad values refused."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        out = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"train.{stage} has no option '{key}'{closest(key, fields)}; options: {', '.join(fields)}"
                )
            out[key] = coerce(value, hints[key], where=f"train.{stage}.{key}")
        for key in ("epochs", "steps", "batch_size", "val_images", "val_samples", "val_every", "accumulate"):
            if out.get(key) is not None and out[key] < 1:
                raise ConfigError(f"train.{stage}.{key} must be >= 1, got {out[key]}")
        if out.get("schedule", "constant") not in SCHEDULES:
            raise ConfigError(
                f"train.{stage}.schedule must be one of {', '.join(SCHEDULES)}, got "
                f"'{out['schedule']}'{closest(str(out['schedule']), SCHEDULES)}"
            )
        if out.get("select", "first-best") not in SELECTIONS:
            raise ConfigError(
                f"train.{stage}.select must be one of {', '.join(SELECTIONS)}, got "
                f"'{out['select']}'{closest(str(out['select']), SELECTIONS)}"
            )
        if out.get("warmup", 0) < 0:
            raise ConfigError(f"train.{stage}.warmup must be >= 0, got {out['warmup']}")
        if out.get("ema") is not None and not 0.0 <= out["ema"] < 1.0:
            raise ConfigError(f"train.{stage}.ema is a decay in [0, 1) (e.g. 0.999), got {out['ema']}")
        for key in ("lr", "weight_decay", "grad_clip", "min_lr"):
            if out.get(key) is not None and out[key] < 0:
                raise ConfigError(f"train.{stage}.{key} must be >= 0, got {out[key]}")
        return cls(**out)


DEFAULT_TRAINING: dict[str, Any] = dataclasses.asdict(StageTraining())
_TOP_TYPES: dict[str, Any] = {"in_channels": int, "image_size": int | None, "max_batch": int}


def _spec(value: Any, default: dict[str, Any] | None, role: str) -> dict[str, Any]:
    """Merge an override (name, dict, or None) into a component spec `{name, **kwargs}`."""
    if value is None:
        return dict(default or {})
    if isinstance(value, str):
        return {"name": value} if not default or default.get("name") != value else dict(default)
    if isinstance(value, dict):
        if "name" in value and (not default or value["name"] != default.get("name")):
            return dict(value)
        return {**(default or {}), **value}
    raise ConfigError(f"{role}: expected a name or a dict of options, got {type(value).__name__}")


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply `{"prior.rank": 5, "sampler": "heun", "train.prior.epochs": 3}` to a method config.

    A component given by a new name replaces the old spec; dotted keys set single options. The
    data keys `in_channels` and `image_size` are set at the top level only and reach every
    component that declares them, so the config never says one size while a module has another.
    """
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in CONFIG_KEYS:
            raise ConfigError(
                f"unknown config key '{key}'{closest(head, CONFIG_KEYS)}; top-level keys: {', '.join(CONFIG_KEYS)}"
            )
        if head in ROLES:
            if rest in DATA_KEYS:
                raise ConfigError(f"'{key}' is set for the whole method: use '{rest}' (e.g. --set {rest}={value})")
            config[head] = _spec({rest: value} if rest else value, config.get(head), head)
        elif head == "train" and rest:
            node = config.setdefault("train", {})
            *path, leaf = rest.split(".")
            for part in path:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"config key '{key}': train.{part} is not a group of options")
            node[leaf] = value
        elif rest:
            raise ConfigError(f"config key '{head}' has no sub-keys (got '{key}')")
        elif head == "stages":
            config[head] = list(value.split(",")) if isinstance(value, str) else list(value)
        elif head == "train":
            if not isinstance(value, dict):
                raise ConfigError(f"config key 'train' expects a dict of stages, got {value!r}")
            config[head] = _deep_merge(config.get("train") or {}, value)
        elif head in _TOP_TYPES:
            config[head] = _top_value(head, value)
            if head in DATA_KEYS:
                for role in ROLES:
                    if isinstance(config.get(role), dict) and key in config[role]:
                        config[role][key] = config[head]
        else:
            config[head] = value
    return config


def _top_value(key: str, value: Any) -> Any:
    """A top-level number (`in_channels`, `image_size`, `max_batch`), typed and positive."""
    out = coerce(value, _TOP_TYPES[key], where=key)
    if out is not None and out < 1:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return out


def _positive_int(value: Any, where: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}") from None
    if out < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return out
