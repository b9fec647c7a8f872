"""Datasets: built-in `synthetic` (known truth), `lidc` (slices zip/folder or pickles), `isic3`.

`build(name, root=None, split="train", **options)` returns a torch Dataset whose items are
dicts `{"image": [C, H, W] float32 in [0, 1], "masks": [A, H, W] uint8 0/1, "id": str,
"group": str}` (synthetic items add `modes` [K, H, W] uint8 and `mode_probs` [K] float32).
Each dataset has `in_channels`, `image_size`, `image_shape` and `num_annotators`. Options are
the registered factory's keyword parameters (see `ambiseg list` and docs/data.md).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, cast

from ..errors import ConfigError
from ..registry import datasets
from . import isic, lidc, synthetic  # noqa: F401  (register the datasets)
from .augment import joint_augment
from .base import AnnotatedDataset, ItemDataset
from .figures import figure_for_item, item_figure, save_figure
from .isic import Isic3Dataset
from .lidc import LidcDataset
from .safe_pickle import safe_load
from .spec import DataSpec
from .splits import assign_groups, split_indices
from .synthetic import MODE_NAMES, SyntheticDataset, make_example
from .validate import SPLITS

__all__ = [
    "build",
    "DataSpec",
    "AnnotatedDataset",
    "ItemDataset",
    "SyntheticDataset",
    "LidcDataset",
    "Isic3Dataset",
    "MODE_NAMES",
    "SPLITS",
    "make_example",
    "assign_groups",
    "split_indices",
    "safe_load",
    "joint_augment",
    "item_figure",
    "figure_for_item",
    "save_figure",
]


def build(
    name: str = "synthetic", root: str | os.PathLike[str] | None = None, split: str = "train", **options: Any
) -> AnnotatedDataset:
    """Dataset `name` from the `datasets` registry.

    Args:
        name: a registered dataset ("synthetic", "lidc", "isic3", or a plug-in's).
        root: where its files are (None for synthetic; lidc/isic3 also read AMBISEG_LIDC /
            AMBISEG_ISIC3).
        split: "train", "val", "test" or "all".
        **options: the dataset's options, e.g. seed=1, size=32, limit=100 (strings from
            the CLI are converted to the declared types). Unknown options are refused.
    """
    entry = datasets.get(name)
    if root is not None and "root" not in {f.name for f in dataclasses.fields(entry.config)}:
        raise ConfigError(f"dataset '{entry.name}' reads no files and takes no root; drop root= / --root")
    # cast: the datasets registry holds AnnotatedDataset subclasses (the plug-in contract in CONTRIBUTING.md)
    return cast(AnnotatedDataset, entry.create(root=None if root is None else os.fspath(root), split=split, **options))
