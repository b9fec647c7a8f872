"""`Method` = Prior + Transport + Sampler + training recipe, and the `build`/`compose` API.

A method's config is a nested, JSON-safe dict::

    {"method": "atfm", "prior": {"name": "gtr", ...}, "transport": {"name": "sfm", ...},
     "sampler": {"name": "euler", "steps": 25}, "stages": ["prior", "transport"],
     "train": {"prior": {...}, "transport": {...}}, "in_channels": 1, "image_size": null,
     "max_batch": 64}

`Method.from_config(method.config)` rebuilds the same method; checkpoints store it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, cast

import torch
from torch import Tensor, nn

from .errors import CompatibilityError, ConfigError, closest
from .interfaces import STATE_KINDS, Prior, Sampler, Transport, map_tensors
from .registry import REGISTRIES, canonical_method, coerce, methods, priors, samplers, transports

__all__ = [
    "Method",
    "Recipe",
    "StageTraining",
    "register_recipe",
    "build",
    "compose",
    "list_components",
    "apply_overrides",
    "method_config",
    "STAGES",
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


def check_states(prior: Prior, transport: Transport) -> None:
    """A one-line `CompatibilityError` unless `transport` carries the kind of state `prior` draws."""
    if prior.draws not in STATE_KINDS:
        raise CompatibilityError(
            f"prior {type(prior).__name__} declares draws={prior.draws!r}; declare one of: {', '.join(STATE_KINDS)}"
        )
    if prior.draws not in transport.accepts:
        raise CompatibilityError(
            f"transport {type(transport).__name__} carries {'/'.join(sorted(transport.accepts))} states, but prior "
            f"{type(prior).__name__} draws {prior.draws} states ({STATE_KINDS[prior.draws]}); pair it with a "
            "prior of an accepted kind"
        )


def _cat_batches(parts: list[Any]) -> Any:
    """Concatenate per-sample conditioning along the batch: tensors, dicts/tuples/lists of them, and
    values that every part shares (None, sizes)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _cat_batches([p[key] for p in parts]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat_batches(list(items)) for items in zip(*parts, strict=True))
    if all(p == first for p in parts):  # None or a value shared by every image (e.g. PHiSeg's image size)
        return first
    raise CompatibilityError(
        f"cannot batch a transport's per-sample conditioning across images: its {type(first).__name__} "
        "values differ between images; return tensors (or dicts/tuples of tensors) from Transport.expand"
    )


def _positive_int(value: Any, where: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}") from None
    if out < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return out


def _create(registry: Any, spec: dict[str, Any], data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Create a component from `{name, **kw}`; the method's data keys fill the options it declares.

    A component value of a data key that contradicts the method's (e.g. `prior.in_channels=3`
    with `in_channels=1`) is refused rather than silently replaced.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{registry.singular} spec needs a 'name': {spec}")
    entry = registry.get(spec["name"])
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    fields = {f.name for f in dataclasses.fields(entry.config)}
    for key in DATA_KEYS:
        if key not in fields or data.get(key) is None:
            continue
        if kwargs.get(key) is not None and kwargs[key] != data[key]:
            raise ConfigError(
                f"{registry.singular}.{key} = {kwargs[key]!r} contradicts the method's {key} = "
                f"{data[key]!r}; set {key} at the top level only"
            )
        kwargs[key] = data[key]
    cfg = entry.make_config(**kwargs)
    obj = entry.factory(**dataclasses.asdict(cfg))
    full = {"name": entry.name, **dataclasses.asdict(cfg)}
    return obj, full


def _infer_stages(prior: Prior, transport: Transport) -> tuple[str, ...]:
    has_params = any(True for _ in transport.parameters())
    if transport.joint:
        return ("joint",)
    if prior.trainable_alone:
        return ("prior", "transport") if has_params else ("prior",)
    return ("transport",)


class Method(nn.Module):
    """A prior, a transport and a sampler, trained in `stages` and sampled in bounded chunks."""

    def __init__(
        self,
        prior: Prior,
        transport: Transport,
        sampler: Sampler,
        *,
        name: str = "custom",
        stages: tuple[str, ...] | list[str] | None = None,
        train: dict[str, Any] | None = None,
        max_batch: int = 64,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if transport.kind not in sampler.integrates:
            # cast: the samplers registry holds Sampler subclasses, whose `integrates` is a ClassVar
            fits = [
                n for n in samplers.names() if transport.kind in cast(type[Sampler], samplers.get(n).factory).integrates
            ]
            raise CompatibilityError(
                f"sampler {type(sampler).__name__} integrates {'/'.join(sorted(sampler.integrates))} transports, "
                f"but transport {type(transport).__name__} is a {transport.kind}; use one of: {', '.join(fits)}"
            )
        transport.check_prior(prior)  # its own, more specific message first
        check_states(prior, transport)
        self.prior, self.transport, self.sampler = prior, transport, sampler
        self.name = name
        self.stages = tuple(stages) if stages else _infer_stages(prior, transport)
        for stage in self.stages:
            if stage not in STAGES:
                raise ConfigError(f"unknown stage '{stage}'{closest(stage, STAGES)}; stages: {', '.join(STAGES)}")
        if "prior" in self.stages and not prior.trainable_alone:
            raise CompatibilityError(f"prior {type(prior).__name__} has no stage of its own; drop stage 'prior'")
        self.max_batch = _positive_int(max_batch, "max_batch")
        train = train or {}
        if not isinstance(train, dict):
            raise ConfigError(f"train must be a dict of stages, got {train!r}")
        for stage, options in train.items():
            if stage not in self.stages:
                raise ConfigError(
                    f"train.{stage}: method '{name}' has no stage '{stage}'{closest(stage, self.stages)}; "
                    f"its stages: {', '.join(self.stages)}"
                )
            if not isinstance(options, dict):
                raise ConfigError(f"train.{stage} must be a dict of options, got {options!r}")
        self.train_config = {
            s: dataclasses.asdict(
                StageTraining.from_dict({**self._stage_module_defaults(s), **train.get(s, {})}, stage=s)
            )
            for s in self.stages
        }
        self._config = config

    def _stage_module_defaults(self, stage: str) -> dict[str, Any]:
        return dict((self.prior if stage == "prior" else self.transport).default_training)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Method:
        """Rebuild a method from its nested config dict (see module docstring)."""
        unknown = [k for k in config if k not in CONFIG_KEYS]
        if unknown:
            raise ConfigError(f"unknown config key '{unknown[0]}'{closest(unknown[0], CONFIG_KEYS)}")
        data = {k: _top_value(k, config.get(k)) if config.get(k) is not None else None for k in DATA_KEYS}
        data["in_channels"] = data["in_channels"] or 1
        prior, pspec = _create(priors, _spec(config.get("prior"), None, "prior"), data)
        transport, tspec = _create(transports, _spec(config.get("transport"), None, "transport"), data)
        sampler, sspec = _create(samplers, _spec(config.get("sampler"), None, "sampler"), data)
        method = cls(
            prior,
            transport,
            sampler,
            name=canonical_method(config.get("method") or "custom"),
            stages=config.get("stages"),
            train=config.get("train"),
            max_batch=config.get("max_batch") or 64,
        )
        config = {
            "method": method.name,
            "prior": pspec,
            "transport": tspec,
            "sampler": sspec,
            "stages": list(method.stages),
            "train": method.train_config,
            "in_channels": data["in_channels"],
            "image_size": data["image_size"],
            "max_batch": method.max_batch,
        }
        method._config = json.loads(json.dumps(config))  # JSON form (tuples -> lists): equal after a round trip
        return method

    @property
    def has_config(self) -> bool:
        """False for a method composed from instances: nothing could rebuild it from a checkpoint."""
        return self._config is not None

    @property
    def config(self) -> dict[str, Any]:
        """Plain nested dict that rebuilds this method with `Method.from_config`."""
        if self._config is None:
            raise ConfigError("this method was composed from instances; compose it by names to get a config")
        return copy.deepcopy(self._config)

    # ---- training -------------------------------------------------------------------------
    def stage_modules(self, stage: str) -> list[nn.Module]:
        """Modules whose parameters `stage` trains."""
        if stage not in self.stages:
            raise ConfigError(f"method '{self.name}' has no stage '{stage}'; its stages: {', '.join(self.stages)}")
        modules: dict[str, list[nn.Module]] = {
            "prior": [self.prior],
            "transport": [self.transport],
            "joint": [self.prior, self.transport],
        }
        return modules[stage]

    def begin_stage(self, stage: str) -> list[nn.Parameter]:
        """Freeze everything but `stage`'s modules (frozen ones go to eval mode); return its parameters."""
        trained = self.stage_modules(stage)
        for module in (self.prior, self.transport):
            on = any(module is m for m in trained)
            module.requires_grad_(on)
            module.train(on)
        return [p for m in trained for p in m.parameters()]

    def loss(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        """Loss terms of `stage` on a batch (`image` [B, C, H, W], `masks` [B, A, H, W]); has "loss"."""
        self.stage_modules(stage)
        if stage == "prior":
            return self.prior.loss(batch)
        return self.transport.loss(batch, self.prior)

    # ---- sampling -------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(
        self,
        images: Tensor,
        num_samples: int,
        *,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        max_batch: int | None = None,
    ) -> Tensor:
        """Draw `num_samples` segmentations per image: probabilities [B, S, H, W] in [0, 1].

        With one `generator` (or none), image-only work (prior and transport `condition`) runs
        once per group of images and the samples go through the sampler in chunks of at most
        `max_batch` states. With a sequence of B generators, one per image, image i's random draws
        come from `generator[i]` exactly as in `sample(images[i:i+1], generator=generator[i])`, so
        its samples do not depend on which images share the call; the states of all images then
        go through the sampler together in chunks of `max_batch` (per image when the sampler
        draws noise itself, see `Sampler.stochastic`).
        """
        if images.ndim != 4:
            raise ConfigError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        num_samples = _positive_int(num_samples, "num_samples")
        limit = _positive_int(max_batch or self.max_batch, "max_batch")
        was_training = self.training
        self.eval()
        try:
            if isinstance(generator, Sequence):
                if len(generator) != images.shape[0]:
                    raise ConfigError(
                        f"sample got {len(generator)} generators for {images.shape[0]} images; pass one per image"
                    )
                return self._sample_each(images, num_samples, limit, list(generator))
            out = []
            group = min(images.shape[0], limit)
            per_chunk = max(1, limit // group)
            for start in range(0, images.shape[0], group):
                imgs = images[start : start + group]
                out.append(self._sample_group(imgs, num_samples, per_chunk, generator))
            return torch.cat(out, dim=0)
        finally:
            self.train(was_training)

    def _conditions(self, images: Tensor) -> tuple[Any, Any]:
        """The image-only work of prior and transport, once per image: (prior state, transport conditioning)."""
        state = self.prior.condition(images)
        return state, self.transport.with_prior(self.transport.condition(images), self.prior, state)

    def _starts(self, n: int, state: Any, cond: Any, generator: torch.Generator | None) -> tuple[Tensor, Any]:
        """Initial states [B*n, ...] and their per-sample conditioning for n samples of each image."""
        x0 = self.prior.sample(state, n, generator=generator).flatten(0, 1)
        per_sample = self.transport.expand(cond, n, generator=generator)
        return self.transport.initial_state(x0, generator=generator), per_sample

    def _integrate(self, start: Tensor, per_sample: Any, generator: torch.Generator | None) -> Tensor:
        """Foreground probabilities [N, H, W] of the final states reached from `start` [N, ...]."""
        x1 = self.sampler(self.transport, start, per_sample, generator=generator, **self.transport.sampler_options())
        return self.transport.to_probs(x1)

    def _sample_group(
        self, images: Tensor, num_samples: int, per_chunk: int, generator: torch.Generator | None
    ) -> Tensor:
        b, _, h, w = images.shape
        state, cond = self._conditions(images)
        chunks = []
        for done in range(0, num_samples, per_chunk):
            n = min(per_chunk, num_samples - done)
            start, per_sample = self._starts(n, state, cond, generator)
            chunks.append(self._integrate(start, per_sample, generator).reshape(b, n, h, w))
        return torch.cat(chunks, dim=1)

    def _sample_each(self, images: Tensor, num_samples: int, limit: int, generators: list[torch.Generator]) -> Tensor:
        """`sample` with one generator per image (see there)."""
        b, _, h, w = images.shape
        if self.sampler.stochastic:
            parts = [self._sample_group(images[i : i + 1], num_samples, limit, g) for i, g in enumerate(generators)]
            return torch.cat(parts, dim=0)
        starts, conds = [], []
        for i, gen in enumerate(generators):  # the draws of sample(images[i:i+1], generator=gen), in its order
            image = images[i : i + 1]
            state, cond = self._conditions(image)
            for done in range(0, num_samples, limit):
                start, per_sample = self._starts(min(limit, num_samples - done), state, cond, gen)
                starts.append(start)
                conds.append(per_sample)
        start, per_sample = torch.cat(starts), _cat_batches(conds)
        rows = [slice(i, i + limit) for i in range(0, start.shape[0], limit)]
        probs = [self._integrate(start[r], map_tensors(itemgetter(r), per_sample), None) for r in rows]
        return torch.cat(probs).reshape(b, num_samples, h, w)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stages={self.stages}, sampler={self.sampler!r}"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A registered method: component specs, stages, per-stage training and named presets.

    `presets` maps a preset name (e.g. "cpu", "paper-lidc") to overrides in the shape of the
    method config (nested dicts), applied over the defaults.
    """

    name: str
    prior: dict[str, Any]
    transport: dict[str, Any]
    sampler: dict[str, Any]
    stages: tuple[str, ...] | None = None
    train: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""

    def config(self, preset: str | None = None) -> dict[str, Any]:
        """The method config of this recipe, with `preset` applied."""
        base = {
            "method": self.name,
            "prior": dict(self.prior),
            "transport": dict(self.transport),
            "sampler": dict(self.sampler),
            "train": copy.deepcopy(self.train),
        }
        if self.stages:
            base["stages"] = list(self.stages)
        if preset is None:
            return base
        if preset not in self.presets:
            raise ConfigError(
                f"method '{self.name}' has no preset '{preset}'{closest(preset, self.presets)}; "
                f"presets: {', '.join(sorted(self.presets)) or '(none)'}"
            )
        return _deep_merge(base, self.presets[preset])


def _recipe_config(recipe: Recipe, *, preset: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The (unbuilt) config of `recipe` with `preset` and keyword overrides applied."""
    config = recipe.config(preset)
    for key, value in overrides.items():
        if key in ROLES and value is not None:
            config[key] = _spec(value, config.get(key), key)
        elif value is not None:
            config = apply_overrides(config, {key: value})
    return config


def register_recipe(recipe: Recipe) -> Recipe:
    """Add `recipe` to the methods registry (name and aliases) and return it."""

    def factory(
        *,
        preset: str | None = None,
        in_channels: int | None = None,
        image_size: int | None = None,
        prior: Any = None,
        transport: Any = None,
        sampler: Any = None,
        train: dict[str, Any] | None = None,
        stages: Any = None,
        max_batch: int | None = None,
    ) -> Method:
        return Method.from_config(
            _recipe_config(
                recipe,
                preset=preset,
                in_channels=in_channels,
                image_size=image_size,
                prior=prior,
                transport=transport,
                sampler=sampler,
                train=train,
                stages=stages,
                max_batch=max_batch,
            )
        )

    methods.register(recipe.name, aliases=recipe.aliases, recipe=recipe, description=recipe.description)(factory)
    return recipe


def build(name: str, *, preset: str | None = None, **overrides: Any) -> Method:
    """A registered recipe with its defaults, a preset and keyword overrides.

    Example: ``build("atfm", preset="cpu", sampler={"name": "heun", "steps": 10}, prior={"rank": 5})``.
    """
    # cast: every `methods` entry is a factory returning a Method (register_recipe's, or a plug-in's by contract)
    return cast(Method, methods.create(name, preset=preset, **overrides))


def method_config(
    name: str, *, preset: str | None = None, overrides: dict[str, Any] | None = None, **keywords: Any
) -> dict[str, Any]:
    """The full config of registered method `name` without building it twice.

    `keywords` are `build`'s (e.g. `in_channels=3`); `overrides` are CLI-style dotted keys applied
    after them (`{"prior.rank": 5}`). For a recipe nothing is built; a plug-in method registered
    as a plain factory is built once to read its config. `Method.from_config` of the result
    builds the modules exactly as the config says.
    """
    entry = methods.get(name)
    recipe = entry.info.get("recipe")
    if recipe is not None:
        config = _recipe_config(recipe, preset=preset, **keywords)
    else:
        config = entry.create(preset=preset, **keywords).config
    return apply_overrides(config, overrides or {})


def compose(
    *,
    prior: str | dict[str, Any] | Prior,
    transport: str | dict[str, Any] | Transport,
    sampler: str | dict[str, Any] | Sampler,
    stages: tuple[str, ...] | None = None,
    train: dict[str, Any] | None = None,
    in_channels: int = 1,
    image_size: int | None = None,
    max_batch: int = 64,
    name: str = "custom",
) -> Method:
    """A new method from components given by name, by `{name, **options}` or as instances.

    Raises `CompatibilityError` with a one-line explanation when the sampler cannot integrate
    the transport (e.g. euler on a diffusion denoiser) or the transport cannot use the prior.
    """
    parts = {"prior": prior, "transport": transport, "sampler": sampler}
    if not any(isinstance(p, (Prior, Transport, Sampler)) for p in parts.values()):
        config = {
            "method": name,
            "stages": list(stages) if stages else None,
            "train": train or {},
            "in_channels": in_channels,
            "image_size": image_size,
            "max_batch": max_batch,
        }
        config.update({k: _spec(v, None, k) for k, v in parts.items()})
        return Method.from_config(config)
    data = {"in_channels": in_channels, "image_size": image_size}

    def instance(value: Any, role: str) -> Any:
        """`value` itself, or the component its name or `{name, **options}` spec builds."""
        if isinstance(value, (str, dict)):
            return _create(REGISTRIES[role + "s"], _spec(value, None, role), data)[0]
        return value

    return Method(
        instance(prior, "prior"),
        instance(transport, "transport"),
        instance(sampler, "sampler"),
        name=name,
        stages=stages,
        train=train,
        max_batch=max_batch,
    )


def list_components() -> dict[str, list[str]]:
    """Every registry kind and its registered names (plug-ins included)."""
    return {kind: registry.names() for kind, registry in REGISTRIES.items()}
