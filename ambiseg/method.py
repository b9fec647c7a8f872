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
from typing import Any

import torch
from torch import Tensor, nn

from .errors import CompatibilityError, ConfigError, closest
from .interfaces import Prior, Sampler, Transport
from .registry import REGISTRIES, methods, priors, samplers, transports

__all__ = [
    "Method", "Recipe", "register_recipe", "build", "compose", "list_components",
    "apply_overrides", "STAGES", "DEFAULT_TRAINING",
]

STAGES = ("prior", "transport", "joint")
DEFAULT_TRAINING: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "epochs": 1, "batch_size": 8,
    "grad_clip": None, "val_images": 8, "val_samples": 8, "accumulate": 1,
}
CONFIG_KEYS = ("method", "prior", "transport", "sampler", "stages", "train", "in_channels", "image_size", "max_batch")
DATA_KEYS = ("in_channels", "image_size")


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

    A component given by a new name replaces the old spec; dotted keys set single options.
    """
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in CONFIG_KEYS:
            raise ConfigError(f"unknown config key '{key}'{closest(head, CONFIG_KEYS)}; top-level keys: {', '.join(CONFIG_KEYS)}")
        if head in ("prior", "transport", "sampler"):
            config[head] = _spec({rest: value} if rest else value, config.get(head), head)
        elif head == "train" and rest:
            node = config.setdefault("train", {})
            *path, leaf = rest.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
        elif rest:
            raise ConfigError(f"config key '{head}' has no sub-keys (got '{key}')")
        elif head == "stages":
            config[head] = list(value.split(",")) if isinstance(value, str) else list(value)
        elif head in ("in_channels", "max_batch"):
            config[head] = _positive_int(value, key)
        else:
            config[head] = value
    return config


def _positive_int(value: Any, where: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}") from None
    if out < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return out


def _create(registry: Any, spec: dict[str, Any], data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Create a component from `{name, **kw}`; data keys (in_channels...) fill options it declares."""
    if "name" not in spec:
        raise ConfigError(f"{registry.singular} spec needs a 'name': {spec}")
    entry = registry.get(spec["name"])
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    fields = {f.name for f in dataclasses.fields(entry.config)}
    for key in DATA_KEYS:
        if key in fields and kwargs.get(key) is None and data.get(key) is not None:
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

    def __init__(self, prior: Prior, transport: Transport, sampler: Sampler, *, name: str = "custom",
                 stages: tuple[str, ...] | list[str] | None = None, train: dict[str, Any] | None = None,
                 max_batch: int = 64, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if transport.kind not in sampler.integrates:
            fits = [n for n in samplers.names() if transport.kind in samplers.get(n).factory.integrates]
            raise CompatibilityError(
                f"sampler {type(sampler).__name__} integrates {'/'.join(sorted(sampler.integrates))} transports, "
                f"but transport {type(transport).__name__} is a {transport.kind}; use one of: {', '.join(fits)}"
            )
        transport.check_prior(prior)
        self.prior, self.transport, self.sampler = prior, transport, sampler
        self.name = name
        self.stages = tuple(stages) if stages else _infer_stages(prior, transport)
        for stage in self.stages:
            if stage not in STAGES:
                raise ConfigError(f"unknown stage '{stage}'{closest(stage, STAGES)}; stages: {', '.join(STAGES)}")
        if "prior" in self.stages and not prior.trainable_alone:
            raise CompatibilityError(f"prior {type(prior).__name__} has no stage of its own; drop stage 'prior'")
        self.max_batch = _positive_int(max_batch, "max_batch")
        self.train_config = {s: {**DEFAULT_TRAINING, **self._stage_module_defaults(s), **(train or {}).get(s, {})}
                             for s in self.stages}
        self._config = config

    def _stage_module_defaults(self, stage: str) -> dict[str, Any]:
        return dict((self.prior if stage == "prior" else self.transport).default_training)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Method":
        """Rebuild a method from its nested config dict (see module docstring)."""
        unknown = [k for k in config if k not in CONFIG_KEYS]
        if unknown:
            raise ConfigError(f"unknown config key '{unknown[0]}'{closest(unknown[0], CONFIG_KEYS)}")
        data = {k: config.get(k) for k in DATA_KEYS}
        data["in_channels"] = data["in_channels"] or 1
        prior, pspec = _create(priors, _spec(config.get("prior"), None, "prior"), data)
        transport, tspec = _create(transports, _spec(config.get("transport"), None, "transport"), data)
        sampler, sspec = _create(samplers, _spec(config.get("sampler"), None, "sampler"), data)
        method = cls(prior, transport, sampler, name=config.get("method") or "custom", stages=config.get("stages"),
                     train=config.get("train"), max_batch=config.get("max_batch") or 64)
        config = {
            "method": method.name, "prior": pspec, "transport": tspec, "sampler": sspec,
            "stages": list(method.stages), "train": method.train_config,
            "in_channels": data["in_channels"], "image_size": data["image_size"], "max_batch": method.max_batch,
        }
        method._config = json.loads(json.dumps(config))  # JSON form (tuples -> lists): equal after a round trip
        return method

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
        return {"prior": [self.prior], "transport": [self.transport], "joint": [self.prior, self.transport]}[stage]

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
    @torch.no_grad()
    def sample(self, images: Tensor, num_samples: int, *, generator: torch.Generator | None = None,
               max_batch: int | None = None) -> Tensor:
        """Draw `num_samples` segmentations per image: probabilities [B, S, H, W] in [0, 1].

        Image-only work (prior and transport `condition`) runs once per group of images; the
        samples are pushed through the sampler in chunks of at most `max_batch` states.
        """
        if images.ndim != 4:
            raise ConfigError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        num_samples = _positive_int(num_samples, "num_samples")
        limit = _positive_int(max_batch or self.max_batch, "max_batch")
        was_training = self.training
        self.eval()
        try:
            out = []
            group = min(images.shape[0], limit)
            per_chunk = max(1, limit // group)
            for start in range(0, images.shape[0], group):
                imgs = images[start:start + group]
                out.append(self._sample_group(imgs, num_samples, per_chunk, generator))
            return torch.cat(out, dim=0)
        finally:
            self.train(was_training)

    def _sample_group(self, images: Tensor, num_samples: int, per_chunk: int,
                      generator: torch.Generator | None) -> Tensor:
        b, _, h, w = images.shape
        state = self.prior.condition(images)
        cond = self.transport.condition(images)
        chunks = []
        for done in range(0, num_samples, per_chunk):
            n = min(per_chunk, num_samples - done)
            x0 = self.prior.sample(state, n, generator=generator).flatten(0, 1)
            x1 = self.sampler(self.transport, x0, self.transport.expand(cond, n, generator=generator),
                              generator=generator)
            chunks.append(self.transport.to_probs(x1).reshape(b, n, h, w))
        return torch.cat(chunks, dim=1)

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
        base = {"method": self.name, "prior": dict(self.prior), "transport": dict(self.transport),
                "sampler": dict(self.sampler), "train": copy.deepcopy(self.train)}
        if self.stages:
            base["stages"] = list(self.stages)
        if preset is None:
            return base
        if preset not in self.presets:
            raise ConfigError(f"method '{self.name}' has no preset '{preset}'{closest(preset, self.presets)}; "
                              f"presets: {', '.join(sorted(self.presets)) or '(none)'}")
        return _deep_merge(base, self.presets[preset])


def _build_recipe(recipe: Recipe, *, preset: str | None = None, **overrides: Any) -> Method:
    config = recipe.config(preset)
    for key, value in overrides.items():
        if key in ("prior", "transport", "sampler") and value is not None:
            config[key] = _spec(value, config.get(key), key)
        elif key == "train" and value is not None:
            config["train"] = _deep_merge(config.get("train", {}), value)
        elif value is not None:
            config = apply_overrides(config, {key: value})
    return Method.from_config(config)


def register_recipe(recipe: Recipe) -> Recipe:
    """Add `recipe` to the methods registry (name and aliases) and return it."""
    def factory(*, preset: str | None = None, in_channels: int | None = None, image_size: int | None = None,
                prior: Any = None, transport: Any = None, sampler: Any = None, train: dict | None = None,
                stages: Any = None, max_batch: int | None = None) -> Method:
        return _build_recipe(recipe, preset=preset, in_channels=in_channels, image_size=image_size, prior=prior,
                             transport=transport, sampler=sampler, train=train, stages=stages, max_batch=max_batch)

    methods.register(recipe.name, aliases=recipe.aliases, recipe=recipe, description=recipe.description)(factory)
    return recipe


def build(name: str, *, preset: str | None = None, **overrides: Any) -> Method:
    """A registered recipe with its defaults, a preset and keyword overrides.

    Example: ``build("atfm", preset="cpu", sampler={"name": "heun", "steps": 10}, prior={"rank": 5})``.
    """
    return methods.create(name, preset=preset, **overrides)


def compose(*, prior: str | dict | Prior, transport: str | dict | Transport, sampler: str | dict | Sampler,
            stages: tuple[str, ...] | None = None, train: dict[str, Any] | None = None, in_channels: int = 1,
            image_size: int | None = None, max_batch: int = 64, name: str = "custom") -> Method:
    """A new method from components given by name, by `{name, **options}` or as instances.

    Raises `CompatibilityError` with a one-line explanation when the sampler cannot integrate
    the transport (e.g. euler on a diffusion denoiser) or the transport cannot use the prior.
    """
    parts = {"prior": prior, "transport": transport, "sampler": sampler}
    if not any(isinstance(p, (Prior, Transport, Sampler)) for p in parts.values()):
        config = {"method": name, "stages": list(stages) if stages else None, "train": train or {},
                  "in_channels": in_channels, "image_size": image_size, "max_batch": max_batch}
        config.update({k: _spec(v, None, k) for k, v in parts.items()})
        return Method.from_config(config)
    data = {"in_channels": in_channels, "image_size": image_size}
    built = {}
    for role, value in parts.items():
        registry = REGISTRIES[role + "s"]
        built[role] = value if not isinstance(value, (str, dict)) else _create(registry, _spec(value, None, role), data)[0]
    return Method(built["prior"], built["transport"], built["sampler"], name=name, stages=stages, train=train,
                  max_batch=max_batch)


def list_components() -> dict[str, list[str]]:
    """Every registry kind and its registered names (plug-ins included)."""
    return {kind: registry.names() for kind, registry in REGISTRIES.items()}

