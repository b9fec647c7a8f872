"""Checkpoints: one safetensors file (weights, optimiser tensors, RNG states) whose header
carries the JSON config and training state. No pickle anywhere, written atomically.

Layout of the tensors: `model/<name>`, `optim/<param index>/<key>`, `ema/<module>/<name>` (a
stage's moving average of weights, while it trains), `rng/torch`, `rng/cuda/<device>`; the
header's `ambiseg` entry holds the method config, stage, epoch, step, optimiser
hyperparameters, Python/NumPy RNG states and the ambiseg version.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._version import __version__
from .errors import AmbisegError, ConfigError, NonFiniteError
from .files import atomic_path, write_error
from .registry import canonical_method

__all__ = [
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "load_method",
    "optimizer_state",
    "capture_rng",
    "restore_rng",
    "FORMAT",
]

FORMAT = 1


@dataclass
class Checkpoint:
    """What a checkpoint holds, tensors separated by role."""

    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor] = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    ema: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU and CUDA) RNG states as tensors, Python and NumPy ones as JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    # cast: with legacy=True (numpy's default, spelled out because the stubs give a bare call the
    # legacy=False overload) numpy's global RNG, an MT19937 RandomState, returns its state as a tuple
    np_state = cast(
        tuple[str, np.ndarray, int, int, float],
        np.random.get_state(legacy=True),  # noqa: NPY002 - numpy's global RNG is the state to save
    )
    py_state = random.getstate()
    return tensors, {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *[float(x) if isinstance(x, float) else int(x) for x in np_state[2:]],
        ],
    }


def restore_rng(tensors: dict[str, torch.Tensor], states: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        for key, state in tensors.items():
            if key.startswith("rng/cuda/") and int(key.rsplit("/", 1)[1]) < torch.cuda.device_count():
                torch.cuda.set_rng_state(state, int(key.rsplit("/", 1)[1]))
    if "python" in states:
        v, internal, gauss = states["python"]
        random.setstate((v, tuple(internal), gauss))
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        np_state = (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        np.random.set_state(np_state)  # noqa: NPY002 - restores numpy's global RNG


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state(ckpt: Checkpoint) -> dict[str, Any] | None:
    """Rebuild an optimiser state dict from a checkpoint (None when it holds none)."""
    info = ckpt.meta.get("optimizer")
    if info is None:
        return None
    state: dict[int, dict[str, Any]] = {}
    for key, value in ckpt.optim.items():
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in info["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    config: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    rng: bool = True,
    ema: dict[str, torch.Tensor] | None = None,
    **state: Any,
) -> None:
    """Write a checkpoint of `model` (and optimiser, weight average `ema` keyed `ema/...`, RNG)
    with `config` and training `state`."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format": FORMAT,
        "ambiseg_version": __version__,
        "method": config.get("method"),
        "config": config,
        **state,
    }
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in opt_tensors.items()})
    tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in (ema or {}).items()})
    if rng:
        rng_tensors, meta["rng"] = capture_rng()
        tensors.update({k: v.cpu().contiguous().clone() for k, v in rng_tensors.items()})
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"ambiseg": json.dumps(meta)})
        except SafetensorError as exc:  # e.g. a full disk, reported by the Rust writer
            raise write_error(path, exc) from None


def load_checkpoint(path: str | os.PathLike, *, method: str | None = None) -> Checkpoint:
    """Read a checkpoint (safetensors only; nothing is unpickled).

    Refuses, with a message saying which: a missing, truncated or foreign file, a checkpoint of
    another ambiseg major version, or (when `method` is given) one of another method.
    """
    path = Path(path)
    if not path.is_file():
        raise AmbisegError(f"checkpoint {path} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AmbisegError(
            f"checkpoint {path} is not a readable safetensors file (truncated or not a checkpoint): {exc}"
        ) from None
    if "ambiseg" not in header:
        raise AmbisegError(f"{path} is a safetensors file but not an ambiseg checkpoint (no 'ambiseg' header)")
    meta = _read_meta(header["ambiseg"], path)
    major = str(meta.get("ambiseg_version", "0")).split(".")[0]
    if major != __version__.split(".")[0]:
        raise AmbisegError(
            f"checkpoint {path} was written by ambiseg {meta.get('ambiseg_version')}; "
            f"this is ambiseg {__version__} (major versions differ); retrain or use a matching version"
        )
    stored = meta.get("method")
    if method is not None and (canonical_method(stored) if isinstance(stored, str) else stored) != method:
        raise AmbisegError(f"checkpoint {path} is of method '{meta.get('method')}', not '{method}'")
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "rng": {}, "ema": {}}
    for key, value in tensors.items():
        role, _, name = key.partition("/")
        if role == "model":
            groups["model"][name] = value
        elif role in groups:
            groups[role][key] = value
    return Checkpoint(meta=meta, model=groups["model"], optim=groups["optim"], rng=groups["rng"], ema=groups["ema"])


def _read_meta(text: str, path: Path) -> dict[str, Any]:
    """The checkpoint's `ambiseg` header: a JSON object whose `config` is an object naming a method."""
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else f"not JSON: {exc}"
        raise AmbisegError(f"{path}: the ambiseg header is damaged ({what}); the checkpoint cannot be used") from None
    if not isinstance(meta, dict):
        raise AmbisegError(
            f"{path}: the ambiseg header is a JSON {type(meta).__name__}, not an object; the checkpoint is damaged"
        )
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("method"), str):
        raise AmbisegError(
            f"{path}: the ambiseg header has no 'config' object naming a method; the checkpoint is damaged"
        )
    return meta


def load_weights(
    model: torch.nn.Module,
    ckpt: Checkpoint,
    *,
    source: str = "checkpoint",
    fix: str = "build the method from the checkpoint's config",
) -> None:
    """Load `ckpt`'s weights into `model`, refusing a mismatch of names or shapes with the first
    difference (and `fix`, what the caller's user should do), and weights holding NaN or inf
    (they would be scored as empty masks)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(ckpt.model))
    extra = sorted(set(ckpt.model) - set(own))
    if missing or extra:
        which = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise AmbisegError(
            f"{source} does not fit this method's configuration ({which}; "
            f"{len(missing)} missing, {len(extra)} unexpected tensors); {fix}"
        )
    for key, value in own.items():
        if value.shape != ckpt.model[key].shape:
            raise AmbisegError(
                f"{source} does not fit this method's configuration: {key} has shape "
                f"{tuple(ckpt.model[key].shape)} there but {tuple(value.shape)} here; {fix}"
            )
    bad = next((k for k, v in ckpt.model.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise NonFiniteError(f"{source}: weight {bad} holds NaN or inf; a damaged checkpoint is never used or scored")
    model.load_state_dict(ckpt.model)


def load_method(path: str | os.PathLike, *, overrides: dict[str, Any] | None = None) -> tuple[Any, Checkpoint]:
    """Rebuild the method stored in checkpoint `path` (from its config) and load its weights.

    `overrides` (dotted keys, e.g. `{"sampler.steps": 10, "prior.temperature": 0.8}`) change the
    stored config before building: sampling options apply to the trained weights; an override
    that changes a weight's shape is refused by the weight check, naming the first difference.
    """
    from .config import apply_overrides
    from .method import Method

    ckpt = load_checkpoint(path)
    try:
        method = Method.from_config(apply_overrides(ckpt.config, overrides) if overrides else ckpt.config)
    except ConfigError as err:
        if overrides or not str(err).startswith("unknown "):
            raise
        raise ConfigError(
            f"{path}: {err}; the run used a component this installation lacks: install its plug-in"
        ) from None
    # built from the checkpoint's own config, so without overrides a mismatch is the file's fault
    damaged = (
        "its tensors disagree with the config stored beside them (an edited or damaged file): restore or retrain it"
    )
    try:
        load_weights(method, ckpt, source=str(path), fix=damaged)
    except AmbisegError as err:
        if not overrides:
            raise
        raise ConfigError(
            f"{', '.join(overrides)} would change the trained network, so its weights no longer "
            f"fit ({err}); only sampling options can change on a checkpoint"
        ) from None
    method.eval()
    return method, ckpt
