"""Options and helpers shared by several commands."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from ..errors import ConfigError
from ..inference import COMPILE_MODES, PRECISION_DTYPES, InferenceOptions

__all__ = [
    "OutPath",
    "parse_sets",
    "split_sets",
    "parse_counts",
    "parse_ints",
    "check_seed",
    "seed_option",
    "SeedType",
    "inference_options",
    "data_options",
    "common_set_option",
    "data_set_option",
    "threads_option",
    "MAX_SAMPLES",
    "MAX_SEED",
    "MAX_SET_DEPTH",
]

MAX_SAMPLES = 10_000  # samples per image; more would take days and fill the memory with masks
MAX_SEED = 2**32 - 1  # seeds derive per-image generator seeds (seed * 100_003 + i) that must fit 64 bits
MAX_SET_DEPTH = 16  # brackets nested in one --set value; config values nest 2 deep at most


def _nesting(text: str) -> int:
    """How deep `[`/`{` nest in JSON `text` (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _set_value(key: str, raw: str) -> Any:
    """The JSON value of `raw` (the text itself when it is not JSON), refusing deep nesting."""
    if _nesting(raw) > MAX_SET_DEPTH:
        raise ConfigError(f"--set {key}: the value nests brackets more than {MAX_SET_DEPTH} deep; give a flat value")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ConfigError(f"--set {key}: the value nests too deeply; give a flat value") from None
    except ValueError:  # not JSON, or an integer of more than 4,300 digits: the text itself
        return raw


def parse_sets(items: tuple[str, ...]) -> dict[str, Any]:
    """`("prior.rank=5", "sampler=heun")` -> `{"prior.rank": 5, "sampler": "heun"}` (JSON values where valid)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--set expects key=value (e.g. --set prior.rank=5), got '{item}'")
        out[key.strip()] = _set_value(key.strip(), raw)
    return out


def split_sets(settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate method overrides from data settings (`data.KEY`, `data.SPLIT.KEY`)."""
    method = {k: v for k, v in settings.items() if k.split(".")[0] != "data"}
    data = {k: v for k, v in settings.items() if k.split(".")[0] == "data"}
    return method, data


def check_seed(seed: int, option: str) -> int:
    """`seed` if it is in 0..MAX_SEED, else a ConfigError naming `option`."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{option} must be between 0 and {MAX_SEED}, got {seed}")
    return seed


class SeedType(click.ParamType):
    """An integer seed in 0..MAX_SEED; anything else is a ConfigError naming the option."""

    name = "seed"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        option = f"--{param.name}" if param and param.name else "--seed"
        try:
            seed = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{option} must be an integer between 0 and {MAX_SEED}, got {value!r}") from None
        return check_seed(seed, option)


def seed_option(help: str = "seed") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--seed`, range-checked (0..MAX_SEED) when parsed: the one seed option of every command."""
    return click.option("--seed", type=SeedType(), default=0, show_default=True, help=help)


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """`"1,2,3"` -> `(1, 2, 3)`; a ConfigError naming `option` for anything else."""
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"{option} expects comma-separated integers, got '{text}'") from None
    if not values:
        raise ConfigError(f"{option} is empty; give comma-separated integers")
    twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if twice is not None:
        raise ConfigError(f"{option} lists {twice} twice in '{text}'; give each value once")
    return values


class OutPath(click.Path):
    """`click.Path` that refuses an empty name: `--out ''` would otherwise mean the working directory."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"--{param.name if param else 'out'} is empty; give a file or directory name")
        return super().convert(value, param, ctx)


def parse_counts(text: str) -> tuple[int, ...]:
    """Sample counts of `--samples` ("16,32,100"): positive and at most MAX_SAMPLES."""
    counts = parse_ints(text, "--samples")
    if min(counts) < 1:
        raise ConfigError(f"--samples must be positive integers, got '{text}'")
    if max(counts) > MAX_SAMPLES:
        raise ConfigError(f"--samples must be at most {MAX_SAMPLES} per image, got {max(counts)}")
    return counts


def data_options(func: Callable[..., Any] | None = None, *, recorded: bool = False) -> Any:
    """--data, --root, --preset; with `recorded`, each defaults to the run's own (from the checkpoint)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        own = " (default: the run's own, from the checkpoint)"
        f = click.option(
            "--preset",
            default=None if recorded else "cpu",
            show_default=not recorded,
            help="bench preset: smoke | cpu | paper (sets data sizes and the method preset)"
            + (own if recorded else ""),
        )(f)
        f = click.option(
            "--root",
            default=None,
            help="dataset root (zip, folder or pickle dir); none for synthetic" + (own if recorded else ""),
        )(f)
        f = click.option(
            "--data",
            "data_name",
            default=None if recorded else "synthetic",
            show_default=not recorded,
            help="dataset name" + (own if recorded else ""),
        )(f)
        return f

    return deco(func) if func is not None else deco


def common_set_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="override a config value, e.g. prior.rank=5, sampler=heun, train.prior.steps=100; "
        "data.KEY=VALUE / data.SPLIT.KEY=VALUE set dataset options (data.size=32, "
        "data.test.limit=500, data.seed=1)",
    )(func)


def data_set_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="dataset options: data.KEY=VALUE for every split, data.SPLIT.KEY=VALUE for one "
        "(e.g. data.test.limit=500); sampling options of the trained method: "
        "sampler.steps=10, sampler=heun, prior.temperature=0.8",
    )(func)


def threads_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--threads N`: torch's CPU threads for the command (default: `OMP_NUM_THREADS`, else the CPUs
    this process may use; see `ambiseg.threads`), set before its work and restored after it."""

    @functools.wraps(func)
    def wrapper(*args: Any, threads: int | None, **kwargs: Any) -> Any:
        from ..threads import choose_threads, using_threads

        with using_threads(choose_threads(threads)):
            return func(*args, **kwargs)

    return click.option(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of torch (default: OMP_NUM_THREADS, else the CPUs this process may use)",
    )(wrapper)


def inference_options(func: Callable[..., Any] | None = None, *, image_batch: bool = True) -> Any:
    """--max-batch, --image-batch (when `image_batch`), --precision, --channels-last, --compile, --compile-mode,
    handed to the command as one `inference` argument (an `InferenceOptions`, validated before any work)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(
            *args: Any,
            max_batch: int | None,
            precision: str,
            channels_last: bool,
            compile_: bool,
            compile_mode: str,
            **kwargs: Any,
        ) -> Any:
            inference = InferenceOptions(
                max_batch=max_batch,
                image_batch=kwargs.pop("image_batch", 8),
                precision=precision,
                channels_last=channels_last,
                compile=compile_ or compile_mode != "default",
                compile_mode=compile_mode,
            )
            return f(*args, inference=inference, **kwargs)

        options = [
            click.option("--max-batch", type=int, default=None, help="at most this many states per sampler call"),
            click.option(
                "--precision",
                type=click.Choice(list(PRECISION_DTYPES)),
                default="fp32",
                show_default=True,
                help="of sampling (bf16: autocast)",
            ),
            click.option("--channels-last", is_flag=True, help="channels-last memory layout for sampling"),
            click.option("--compile", "compile_", is_flag=True, help="torch.compile the transport for sampling"),
            click.option(
                "--compile-mode",
                type=click.Choice(list(COMPILE_MODES)),
                default="default",
                show_default=True,
                help="torch.compile mode (implies --compile; reduce-overhead: CUDA graphs)",
            ),
        ]
        if image_batch:
            options.insert(
                1,
                click.option(
                    "--image-batch",
                    type=int,
                    default=8,
                    show_default=True,
                    help="test images sampled together (results do not depend on it)",
                ),
            )
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return deco(func) if func is not None else deco
