"""`DataSpec`: which data a run was trained and scored on, recorded with every run.

A spec is the dataset name, the root as the user gave it, the bench preset (which sizes each
split), the seed of the split and any dataset options set by hand (`--set data.KEY=VALUE` for
every split, `--set data.test.KEY=VALUE` for one). Checkpoints, `config.json` and bench
records store `spec.to_dict()`, so `ambiseg eval RUN/last.safetensors` scores the run's own data
unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..bench_presets import bench_preset
from ..errors import ConfigError, closest
from ..registry import coerce, datasets
from .base import AnnotatedDataset
from .validate import check_data_seed

__all__ = ["DataSpec", "SPLIT_NAMES", "training_data", "describe_data"]

SPLIT_NAMES = ("train", "val", "test", "all")
_RESERVED = {"root": "--root", "split": "--split (eval/sample) or data.<split>.KEY"}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A dataset and its options, enough to rebuild every split of a run exactly.

    Attributes:
        name: registered dataset name.
        root: the dataset root as given (a path string), or None.
        preset: bench preset whose data sizes apply (`smoke`, `cpu`, `paper`).
        seed: seed of the patient/image split (and of `limit`'s subset); independent of the
            training seed, so seeds of a benchmark vary the model, not the test set.
        options: dataset options for every split (e.g. `{"size": 32}`).
        splits: dataset options for one split (e.g. `{"test": {"limit": 500}}`).
    """

    name: str = "synthetic"
    root: str | None = None
    preset: str = "cpu"
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    splits: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        datasets.get(self.name)  # unknown names fail here, with the closest match
        bench_preset(self.preset)
        if self.root is not None:
            object.__setattr__(self, "root", os.fspath(self.root))
        object.__setattr__(self, "seed", check_data_seed(coerce(self.seed, int, where="data.seed")))
        object.__setattr__(self, "options", self._checked(self.options, "data"))
        splits = {}
        for split, options in self.splits.items():
            if split not in SPLIT_NAMES:
                raise ConfigError(
                    f"data.{split}: unknown split{closest(split, SPLIT_NAMES)}; splits: {', '.join(SPLIT_NAMES)}"
                )
            splits[split] = self._checked(options, f"data.{split}")
        object.__setattr__(self, "splits", splits)

    def _checked(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        """Options typed by the dataset's declared config; unknown or reserved keys refused."""
        fields = {f.name: f for f in dataclasses.fields(datasets.get(self.name).config)}
        out = {}
        for key, value in options.items():
            if key in _RESERVED:
                raise ConfigError(f"{where}.{key}: give the {key} with {_RESERVED[key]}")
            if key == "seed":
                raise ConfigError(f"{where}.seed: the split seed is one for all splits; use data.seed")
            if key not in fields:
                raise ConfigError(
                    f"{where}.{key}: dataset '{self.name}' has no option '{key}'{closest(key, fields)}; "
                    f"options: {', '.join(k for k in fields if k not in (*_RESERVED, 'seed'))}"
                )
            out[key] = coerce(value, fields[key].type, where=f"{where}.{key}")
        return out

    # ---- building -----------------------------------------------------------------------------
    def options_for(self, split: str) -> dict[str, Any]:
        """Every option the dataset gets for `split`: the preset's, then `options`, then `splits[split]`."""
        if split not in SPLIT_NAMES:
            raise ConfigError(f"unknown split '{split}'{closest(split, SPLIT_NAMES)}; splits: {', '.join(SPLIT_NAMES)}")
        preset = bench_preset(self.preset).data_options(datasets.canonical(self.name), split)
        out = {**preset, **self.options, **self.splits.get(split, {}), "seed": self.seed}
        if self.root is not None:
            out["root"] = self.root
        return out

    def build(self, split: str) -> AnnotatedDataset:
        """The dataset of `split` ("train", "val", "test" or "all")."""
        from . import build

        options = self.options_for(split)
        return build(self.name, split=split, **options)

    def build_splits(self, splits: tuple[str, ...] = ("train", "val", "test")) -> dict[str, AnnotatedDataset]:
        return {split: self.build(split) for split in splits}

    # ---- changing and recording ----------------------------------------------------------------
    def with_settings(self, settings: dict[str, Any]) -> DataSpec:
        """Apply `{"data.size": 32, "data.test.limit": 500, "data.seed": 1}` (the `--set data.*` keys)."""
        seed, options = self.seed, dict(self.options)
        splits = {k: dict(v) for k, v in self.splits.items()}
        for key, value in settings.items():
            parts = key.split(".")
            if parts[0] != "data" or len(parts) < 2 or not all(parts):
                raise ConfigError(f"'{key}' is not a data setting; use data.KEY=VALUE or data.SPLIT.KEY=VALUE")
            if parts[1:] == ["seed"]:
                seed = value
            elif len(parts) == 2:
                options[parts[1]] = value
            elif len(parts) == 3:
                if parts[1] not in SPLIT_NAMES:
                    raise ConfigError(
                        f"'{key}': unknown split '{parts[1]}'{closest(parts[1], SPLIT_NAMES)}; "
                        f"splits: {', '.join(SPLIT_NAMES)}"
                    )
                splits.setdefault(parts[1], {})[parts[2]] = value
            else:
                raise ConfigError(
                    f"'{key}': expected data.KEY or data.SPLIT.KEY with SPLIT one of {', '.join(SPLIT_NAMES)}"
                )
        return dataclasses.replace(self, seed=seed, options=options, splits=splits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (tuples become lists; `from_dict` types them back)."""
        out = dataclasses.asdict(self)
        out["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["options"].items()}
        out["splits"] = {
            s: {k: list(v) if isinstance(v, tuple) else v for k, v in o.items()} for s, o in out["splits"].items()
        }
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "data spec") -> DataSpec:
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(values).__name__}")
        unknown = [k for k in values if k not in {f.name for f in dataclasses.fields(cls)}]
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'")
        return cls(**values)

    def describe(self) -> str:
        """One line for messages: `lidc (root ../x.zip, preset cpu, split seed 0, test limit 500)`."""
        parts = [f"root {self.root}"] if self.root else []
        parts += [f"preset {self.preset}", f"split seed {self.seed}"]
        parts += [f"{k}={v}" for k, v in self.options.items()]
        parts += [f"{s} {k}={v}" for s, o in self.splits.items() for k, v in o.items()]
        return f"{self.name} ({', '.join(parts)})"


def training_data(data: Any) -> Any:
    """A recorded data spec without its test split's options: which test images score a run does
    not change what it was trained on, so two runs with equal `training_data` trained alike."""
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict):
        return data
    return {**data, "splits": {k: v for k, v in data["splits"].items() if k != "test"}}


def describe_data(data: Any) -> str:
    """`DataSpec.describe` of a recorded spec, or its raw form when it is not one."""
    try:
        return DataSpec.from_dict(data).describe()
    except (ConfigError, TypeError, ValueError):
        return repr(data)
