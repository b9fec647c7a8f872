"""Registered methods: `Recipe`, `register_recipe`, and the `build` / `compose` / `method_config` API.

A recipe names a method's component specs, stages, per-stage training and presets; `build`
makes a `Method` from one, `compose` makes one from components given by name or as instances.
`build_for_data` sizes a recipe for a dataset, as `ambiseg train` and `ambiseg bench` do.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any, cast

from .config import ROLES, _deep_merge, _spec, apply_overrides
from .errors import ConfigError, closest
from .interfaces import Prior, Sampler, Transport
from .method import Method, _create
from .registry import REGISTRIES, methods

if TYPE_CHECKING:
    from .data.base import ItemDataset

__all__ = [
    "Recipe",
    "register_recipe",
    "build",
    "compose",
    "method_config",
    "list_components",
    "pick_preset",
    "build_for_data",
]


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


def pick_preset(name: str, candidates: str | tuple[str, ...] | None) -> str | None:
    """The first of `candidates` that method `name` defines (a plug-in factory gets the last)."""
    if candidates is None or isinstance(candidates, str):
        return candidates
    recipe = methods.get(name).info.get("recipe")
    if recipe is None:
        return candidates[-1]
    return next((c for c in candidates if c in recipe.presets), candidates[-1])


def build_for_data(
    name: str, dataset: ItemDataset, *, preset: str | tuple[str, ...] | None, overrides: dict[str, Any]
) -> Method:
    """Build recipe `name` once, sized for `dataset` (channels, image size), with CLI-style overrides.

    `preset` may list candidates, most specific first (`("cpu-lidc", "cpu")`, see `pick_preset`).

    The config is assembled first and the modules built once from it, so the config saved with
    the run is exactly the one the modules were built from. An override of `in_channels` or
    `image_size` that contradicts the data is refused.
    """
    data_size = int(getattr(dataset, "image_shape", (None,))[0] or 0) or None
    channels = int(getattr(dataset, "in_channels", 1))
    config = method_config(
        name, preset=pick_preset(name, preset), overrides=overrides, in_channels=channels, image_size=data_size
    )
    for key, have in (("in_channels", channels), ("image_size", data_size)):
        if have is not None and config.get(key) is not None and config[key] != have:
            what = "channels" if key == "in_channels" else "pixels per side"
            raise ConfigError(
                f"{key}={config[key]} contradicts the data, which has {have} {what}; "
                f"drop --set {key} (the data decides it) or change the data (e.g. --set data.size=...)"
            )
    return Method.from_config(config)
