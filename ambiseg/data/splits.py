"""Patient-level train/val/test splits, deterministic from a seed.

Slices of one patient are strongly correlated, so a slice-level split leaks the test set into
training (the public ATFM code does this). Here whole groups (patients) are shuffled with a
seeded generator and cut by the split fractions; no group lands in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .validate import check_data_seed, check_split

__all__ = ["DEFAULT_FRACTIONS", "check_fractions", "assign_groups", "split_indices", "subset"]

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
_NAMES = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative train/val/test fractions summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or not np.isfinite(values).all() or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(
            f"fractions must be three non-negative numbers (train, val, test) summing to 1, got {values}; "
            "e.g. fractions=(0.6, 0.2, 0.2)"
        )
    return values


def assign_groups(
    groups: Sequence[str], *, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, str]:
    """Map each distinct group to "train", "val" or "test".

    The sorted distinct groups are permuted by `numpy.random.default_rng(seed)`; the first
    round(f_train * G) go to train, up to round((f_train + f_val) * G) to val, the rest to test.
    The result depends only on the set of groups, the seed and the fractions.
    """
    f_train, f_val, _ = check_fractions(fractions)
    unique = sorted(set(groups))
    order = np.random.default_rng(check_data_seed(seed)).permutation(len(unique))
    cut1 = round(f_train * len(unique))
    cut2 = round((f_train + f_val) * len(unique))
    names = np.repeat(np.array(_NAMES), [cut1, cut2 - cut1, len(unique) - cut2])
    return {unique[i]: str(names[rank]) for rank, i in enumerate(order)}


def split_indices(
    groups: Sequence[str],
    split: str,
    *,
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    where: str = "dataset",
) -> list[int]:
    """Indices (in order) of the items whose group falls in `split`; "all" keeps every item.

    Raises DataError when the split is empty (too few groups for the fractions).
    """
    check_split(split)
    if split == "all":
        return list(range(len(groups)))
    assignment = assign_groups(groups, seed=seed, fractions=fractions)
    chosen = [i for i, g in enumerate(groups) if assignment[g] == split]
    if not chosen:
        raise DataError(
            f"{where}: split '{split}' is empty ({len(assignment)} patient group(s), fractions "
            f"{tuple(check_fractions(fractions))}); add data, change fractions, or use split='all'"
        )
    return chosen


def subset(indices: Sequence[int], limit: int | None, *, seed: int, groups: Sequence[str] | None = None) -> list[int]:
    """At most `limit` of `indices`, drawn without replacement by a seeded generator, kept in order.

    With `groups` (the group of each of `indices`, e.g. its patient) the draw spans every group:
    one seeded pick per group first, then the rest of `limit` at random from what is left, so a
    test subset has a slice of every test patient.
    """
    if limit is None or limit >= len(indices):
        return list(indices)
    if limit < 1:
        raise ConfigError(f"limit must be a positive number of items, got {limit}")
    rng = np.random.default_rng([check_data_seed(seed), 1])
    if groups is None:
        keep = rng.choice(len(indices), size=limit, replace=False)
        return [indices[i] for i in sorted(keep)]
    if len(groups) != len(indices):
        raise ConfigError(f"subset: {len(groups)} groups for {len(indices)} indices")
    names = sorted(set(groups))
    if limit < len(names):
        raise ConfigError(
            f"limit={limit} cannot span all {len(names)} groups (patients) of the split; "
            f"use limit >= {len(names)} or drop spread"
        )
    members: dict[str, list[int]] = {name: [] for name in names}
    for position, group in enumerate(groups):
        members[group].append(position)
    first = {int(rng.choice(members[name])) for name in names}
    rest = np.array([i for i in range(len(indices)) if i not in first])
    more = rng.choice(rest, size=limit - len(first), replace=False).tolist() if limit > len(first) else []
    return [indices[i] for i in sorted(first | {int(i) for i in more})]
