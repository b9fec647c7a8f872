"""`isic3`: ISIC skin-lesion images with three annotators' masks (the ATFM/CIMD "ISIC3" set).

Folder layout (as in the public ATFM code)::

    <root>/Images/<id>.jpg                       also .jpeg / .png; RGB
    <root>/Segmentations/<id>_<letter>.png       or <id>_<anything>_<letter>.png; binary

`<id>` is an image's file stem (it may contain underscores, e.g. ISIC_0000000); a mask
belongs to the image with the longest stem that, followed by "_", starts the mask name.
`<letter>` is the annotator style letter (f, m, p in the ISIC archive). Only images with
exactly `num_annotators` (default 3) masks are kept; the others are listed in `skipped`.
Images and masks are resized to `size` x `size` (image bilinear, masks nearest neighbour, so
non-square images are squashed). Training items are jointly flipped and rotated when
`augment` is on. Group = image id (the layout carries no patient id).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from ..errors import ConfigError, DataError
from ..registry import datasets
from .augment import joint_augment
from .base import AnnotatedDataset
from .splits import DEFAULT_FRACTIONS, split_indices, subset
from .validate import MAX_SIDE, binary_mask, check_count, check_shape, check_split, decode_png

__all__ = ["ENV_VAR", "IMAGE_SUFFIXES", "index_folder", "Isic3Dataset"]

ENV_VAR = "AMBISEG_ISIC3"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MASK_TAIL = re.compile(r"^(?:.*_)?(?P<letter>[A-Za-z])\.png$")


def index_folder(root: Path) -> tuple[dict[str, Path], dict[str, list[tuple[str, Path]]], list[str]]:
    """Images by id, their (letter, mask path) lists sorted by letter then name, and unmatched mask names."""
    folders = {name: root / name for name in ("Images", "Segmentations")}
    for folder in folders.values():
        if not folder.is_dir():
            raise DataError(
                f"isic3: '{folder}' is missing; root must hold Images/ and Segmentations/ (see docs/data.md)"
            )
    images: dict[str, Path] = {}
    for path in sorted(folders["Images"].iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            if path.stem in images:
                raise DataError(f"isic3: {path} and {images[path.stem]} share the id '{path.stem}'; keep one of them")
            images[path.stem] = path
    if not images:
        raise DataError(f"isic3: {folders['Images']} holds no .jpg/.jpeg/.png images")
    masks: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    unmatched = []
    for path in sorted(folders["Segmentations"].glob("*.png")):
        owner = _owner(path.name, images)
        tail = _MASK_TAIL.match(path.name[len(owner) + 1 :]) if owner else None
        if owner is None or tail is None:
            unmatched.append(path.name)
            continue
        if not path.is_file():  # a FIFO would block the decoder forever
            raise DataError(f"{path}: not a regular file (a folder, FIFO, device or socket); expected a mask PNG")
        masks[owner].append((tail["letter"].lower(), path))
    for entries in masks.values():
        entries.sort(key=lambda e: (e[0], e[1].name))
    return images, dict(masks), unmatched


def _owner(mask_name: str, images: dict[str, Path]) -> str | None:
    """The longest image id `i` with `mask_name` starting with `i + "_"`."""
    cuts = [m.start() for m in re.finditer("_", mask_name)]
    for cut in reversed(cuts):
        if mask_name[:cut] in images:
            return mask_name[:cut]
    return None


@datasets.register(
    "isic3", aliases=("isic",), description="ISIC skin lesions with 3 annotators (Images/, Segmentations/)"
)
class Isic3Dataset(AnnotatedDataset):
    """RGB dermoscopy images with `num_annotators` masks each; see the module docstring."""

    def __init__(
        self,
        *,
        root: str | None = None,
        split: str = "train",
        seed: int = 0,
        fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
        size: int = 128,
        num_annotators: int = 3,
        augment: bool = True,
        limit: int | None = None,
    ) -> None:
        """
        Args:
            root: folder holding Images/ and Segmentations/; default: the AMBISEG_ISIC3 variable.
            split: "train", "val", "test" (by image) or "all".
            seed: seed of the split (and of `limit`'s subset).
            fractions: train/val/test fractions.
            size: output side in pixels (the paper uses 256; 128 keeps CPU runs short).
            num_annotators: keep only images with exactly this many masks.
            augment: random flips and rotations up to 15 degrees on split "train".
            limit: keep a seeded random subset of this many images of the split.
        """
        root = root or os.environ.get(ENV_VAR)
        if not root:
            raise DataError(
                f"isic3 needs root= (or the {ENV_VAR} environment variable): a folder with Images/ "
                "and Segmentations/; see docs/data.md"
            )
        if size < 8 or num_annotators < 1:
            raise ConfigError(f"isic3: size must be >= 8 and num_annotators >= 1, got {size} and {num_annotators}")
        check_count(size, 8, MAX_SIDE, where="isic3: size (pixels)")
        self.name, self.split, self.root = "isic3", check_split(split), Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(
                f"isic3 root '{self.root}' is not a folder; pass the folder holding Images/ and Segmentations/"
            )
        images, masks, self.unmatched = index_folder(self.root)
        self.skipped = {i: len(masks.get(i, [])) for i in images if len(masks.get(i, [])) != num_annotators}
        ids = [i for i in images if i not in self.skipped]
        if not ids:
            counts = sorted(set(self.skipped.values()))
            raise DataError(
                f"isic3 at {self.root}: no image has exactly {num_annotators} masks (mask counts found: {counts}); "
                f"masks must be named Segmentations/<id>_<letter>.png or <id>_<anything>_<letter>.png"
            )
        keep = subset(
            split_indices(ids, split, seed=seed, fractions=fractions, where=f"isic3 at {self.root}"), limit, seed=seed
        )
        self.ids = [ids[i] for i in keep]
        self.groups = list(self.ids)
        self.image_paths = [images[i] for i in self.ids]
        self.mask_paths = [[path for _, path in masks[i]] for i in self.ids]
        self.letters = ["".join(letter for letter, _ in masks[i]) for i in self.ids]
        self.in_channels, self.image_shape, self.num_annotators = 3, (int(size), int(size)), int(num_annotators)
        self.augment = bool(augment) and split == "train"

    def _load(self, index: int) -> dict[str, Any]:
        side = self.image_shape[0]
        raw = decode_png(self.image_paths[index], where=str(self.image_paths[index]), mode="RGB")
        image = (
            np.asarray(Image.fromarray(raw).resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        )
        masks = []
        for path in self.mask_paths[index]:
            mask = decode_png(path, where=str(path))
            if mask.ndim == 3:
                raise DataError(f"{path}: mask has {mask.shape[2]} channels; save masks as single-channel binary PNGs")
            check_shape(mask.shape, raw.shape[:2], where=str(path), what="mask")
            mask = binary_mask(mask, where=str(path))
            masks.append(np.asarray(Image.fromarray(mask).resize((side, side), Image.Resampling.NEAREST)))
        image_t = torch.from_numpy(np.ascontiguousarray(rearrange(image, "h w c -> c h w")))
        masks_t = torch.from_numpy(np.stack(masks))
        if self.augment:
            image_t, masks_t = joint_augment(image_t, masks_t)
        return {"image": image_t, "masks": masks_t, "id": self.ids[index], "group": self.groups[index]}
