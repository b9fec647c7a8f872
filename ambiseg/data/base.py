"""What every ambiseg dataset is: a torch Dataset of dicts, with its size and channel count.

An item is `{"image": [C, H, W] float32 in [0, 1], "masks": [A, H, W] uint8 in {0, 1},
"id": str, "group": str}` (datasets with a known truth add more keys). `in_channels`,
`image_size` and `num_annotators` let a trainer size its models before reading any item.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["AnnotatedDataset", "ItemDataset"]


class ItemDataset(Protocol):
    """A sized dataset of item dicts: what training and evaluation read.

    Every `AnnotatedDataset` is one; so is any object with `len()` and integer indexing that
    returns item dicts (a list of items, a wrapper that selects or augments items).
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> dict[str, Any]: ...


class AnnotatedDataset(Dataset, ABC):
    """Base class: bounds-checked indexing over `_load(i)` plus shape attributes.

    Subclasses set `name`, `split`, `in_channels`, `image_shape` (H, W), `num_annotators`
    and `ids`/`groups` (one per item, in item order), and implement `_load`.
    """

    name: str
    split: str
    in_channels: int
    image_shape: tuple[int, int]
    num_annotators: int
    ids: list[str]
    groups: list[str]

    @property
    def image_size(self) -> int | None:
        """Side of the (square) images, or None when H != W."""
        height, width = self.image_shape
        return height if height == width else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise DataError(f"{self.name}: index must be an integer, got {index!r}") from None
        n = len(self)
        if not -n <= i < n:
            raise DataError(
                f"{self.name} split '{self.split}' has {n} item(s); index {i} is out of range (use 0..{n - 1})"
            )
        return self._load(i % n)

    @abstractmethod
    def _load(self, index: int) -> dict[str, Any]:
        """Item `index` (0 <= index < len)."""

    def verify(self) -> int:
        """Decode every item (running all per-item checks); returns the item count.

        Lazy datasets check sizes and mask values only when an item is read; call this once
        to find a bad file up front.
        """
        for i in range(len(self)):
            self._load(i)
        return len(self)

    def __repr__(self) -> str:
        h, w = self.image_shape
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, items={len(self)}, "
            f"channels={self.in_channels}, size={h}x{w}, annotators={self.num_annotators})"
        )
