"""Options and helpers shared by several commands."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from ..errors import ConfigError

__all__ = ["parse_sets", "parse_counts", "parse_ints", "data_options", "common_set_option"]


def parse_sets(items: tuple[str, ...]) -> dict[str, Any]:
    """`("prior.rank=5", "sampler=heun")` -> `{"prior.rank": 5, "sampler": "heun"}` (JSON values where valid)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--set expects key=value (e.g. --set prior.rank=5), got '{item}'")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"{option} expects comma-separated integers, got '{text}'") from None
    if not values:
        raise ConfigError(f"{option} is empty; give comma-separated integers")
    return values


def parse_counts(text: str) -> tuple[int, ...]:
    counts = parse_ints(text, "--samples")
    if min(counts) < 1:
        raise ConfigError(f"--samples must be positive integers, got '{text}'")
    return counts


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--data, --root, --preset."""
    func = click.option("--preset", default="cpu", show_default=True,
                        help="bench preset: smoke | cpu | paper (sets data sizes and the method preset)")(func)
    func = click.option("--root", default=None, help="dataset root (zip, folder or pickle dir); none for synthetic")(func)
    func = click.option("--data", "data_name", default="synthetic", show_default=True, help="dataset name")(func)
    return func


def common_set_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                        help="override a config value, e.g. prior.rank=5, sampler=heun, train.prior.steps=100")(func)
