"""`Method`: a prior, a transport and a sampler, trained in stages and sampled in bounded chunks.

`Method.from_config(method.config)` rebuilds the same method (the config's shape is in
`ambiseg.config`); checkpoints store that config. Registered recipes and the `build`/`compose`
API are in `ambiseg.recipes`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import warnings
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, cast

import torch
from torch import Tensor, nn

from .config import CONFIG_KEYS, DATA_KEYS, STAGES, StageTraining, _positive_int, _spec, _top_value
from .config import apply_overrides as apply_overrides  # the name many callers import from here
from .errors import CompatibilityError, ConfigError, closest
from .interfaces import STATE_KINDS, Prior, Sampler, Transport, map_tensors
from .registry import canonical_method, priors, samplers, transports

__all__ = ["Method", "check_states"]


def check_states(prior: Prior, transport: Transport) -> None:
    """A one-line `CompatibilityError` unless `transport` carries the kind of state `prior` draws."""
    if prior.draws not in STATE_KINDS:
        raise CompatibilityError(
            f"prior {type(prior).__name__} declares draws={prior.draws!r}; declare one of: {', '.join(STATE_KINDS)}"
        )
    if not transport.accepts:
        raise CompatibilityError(
            f"transport {type(transport).__name__} declares no prior state it carries; set `accepts = "
            f"frozenset({{...}})` on the class to the kinds it can start from ({', '.join(STATE_KINDS)})"
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

    pretrained: Any = None  # the published run it was loaded from (`ambiseg.load_pretrained`), if any

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


_MOVED = ("Recipe", "register_recipe", "build", "compose", "method_config", "list_components")


def __getattr__(name: str) -> Any:
    """Names that moved to `ambiseg.recipes`, still importable from here with a DeprecationWarning."""
    if name in _MOVED:
        warnings.warn(
            f"ambiseg.method.{name} moved to ambiseg.recipes.{name} (or ambiseg.{name}); import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("ambiseg.recipes"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
