"""`lidc`: LIDC-IDRI lung-nodule crops with several radiologists' masks (Armato et al., 2011).

Two formats, found from `root`:

* the "LIDC-IDRI slices" layout, as a zip or an extracted folder::

      LIDC-IDRI-slices/<patient>/<nodule>/images/<slice>.png     grey, 0..255
      LIDC-IDRI-slices/<patient>/<nodule>/mask-<k>/<slice>.png   one folder per rater, {0, 255}

  Only names are indexed at construction; PNGs are decoded in `__getitem__` (the zip is
  opened lazily once per process, so DataLoader workers each get their own handle).
  Group = patient folder.
* one or more `*.pickle` / `*.pkl` files, each a dict slice-name -> {"image": float [H, W] in
  [0, 1], "masks": list of binary [H, W], "series_uid": str, ...}, loaded through the
  restricted unpickler of `safe_pickle` and checked eagerly. Group = series_uid (the format
  has no patient id, so a CT series stands for its patient).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import datasets
from .base import AnnotatedDataset
from .safe_pickle import safe_load
from .splits import DEFAULT_FRACTIONS, split_indices, subset
from .validate import (
    binary_mask,
    check_bits,
    check_nonempty,
    check_shape,
    check_split,
    decode_png,
    unit_image,
)

__all__ = [
    "ENV_VAR",
    "PICKLE_SUFFIXES",
    "SliceRecord",
    "ZipStore",
    "FolderStore",
    "SlicesSource",
    "PickleSource",
    "open_source",
    "LidcDataset",
]

ENV_VAR = "AMBISEG_LIDC"
PICKLE_SUFFIXES = (".pickle", ".pkl")
MAX_FILE_BYTES = 64 * 2**20  # one PNG of the layout (LIDC's 128 x 128 slices are about 10 KB)
MAX_RATIO = 200  # a zip entry over 1 MiB may expand at most this much (PNGs are compressed already)
_RATIO_FLOOR = 2**20
LAYOUT = "<patient>/<nodule>/images/<slice>.png with <patient>/<nodule>/mask-<k>/<slice>.png"
_SLICE_NAME = re.compile(
    r"^(?:.*/)?(?P<patient>[^/]+)/(?P<nodule>[^/]+)/(?P<folder>images|mask-(?P<rater>\d+))/(?P<slice>[^/]+)\.png$"
)


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key putting "slice-2" before "slice-10" (ASCII digits only: "slice-1²" sorts as text)."""
    return tuple(
        (0, int(part), "") if part.isdigit() and part.isascii() else (1, 0, part)
        for part in re.split(r"([0-9]+)", text)
    )


@dataclasses.dataclass(frozen=True)
class SliceRecord:
    """One slice: its id and group, and where its image and masks are (names or arrays)."""

    id: str
    group: str
    image: Any
    masks: tuple[Any, ...]
    where: str


class ZipStore:
    """PNG bytes from a zip, opened lazily once per process."""

    def __init__(self, path: Path) -> None:
        if not zipfile.is_zipfile(path):
            raise DataError(
                f"{path}: not a zip file; pass the lidc-idri-slices.zip, an extracted folder, or *.pickle files"
            )
        self.path, self.label = path, str(path)
        self._zip: zipfile.ZipFile | None = None
        self._pid: int | None = None

    def _archive(self) -> zipfile.ZipFile:
        """This process's handle (reading the central directory costs ~0.5 s for 62k entries)."""
        if self._zip is None or self._pid != os.getpid():
            try:
                self._zip, self._pid = zipfile.ZipFile(self.path), os.getpid()
            except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
                raise DataError(f"{self.path}: the zip's directory is damaged ({exc}); download it again") from None
        return self._zip

    def names(self) -> list[str]:
        return [n for n in self._archive().namelist() if not n.startswith("__MACOSX/")]

    def check(self, name: str) -> zipfile.ZipInfo:
        """The entry `name`, refused before reading when it is encrypted, or its declared size or
        compression ratio is beyond `MAX_FILE_BYTES` / `MAX_RATIO` (a zip bomb)."""
        try:
            info = self._archive().getinfo(name)
        except KeyError:
            raise DataError(
                f"{self.path}: entry '{name}' is gone; was the zip replaced after the dataset was built?"
            ) from None
        where = f"{self.path}: entry '{name}'"
        if info.flag_bits & 0x1:
            raise DataError(f"{where} is encrypted; ambiseg reads unencrypted zips only, re-pack it without a password")
        if info.file_size > MAX_FILE_BYTES:
            raise DataError(
                f"{where} declares {info.file_size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for one "
                "image; is it a real slice PNG?"
            )
        if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise DataError(
                f"{where} expands {info.compress_size:,} bytes to {info.file_size:,} (more than {MAX_RATIO}x), "
                "which is refused as a zip bomb; is it a real slice PNG?"
            )
        return info

    def read(self, name: str) -> bytes:
        info = self.check(name)
        try:
            with self._archive().open(info) as handle:
                return read_bounded(handle, f"{self.path}: entry '{name}'")
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise DataError(
                f"{self.path}: entry '{name}' cannot be read ({exc}); the zip is damaged, download it again"
            ) from None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the zip themselves
        return {**self.__dict__, "_zip": None, "_pid": None}


class FolderStore:
    """PNG bytes from an extracted folder."""

    def __init__(self, path: Path) -> None:
        self.path, self.label = path, str(path)

    def names(self) -> list[str]:
        return [p.relative_to(self.path).as_posix() for p in self.path.glob("*/*/*/*.png")]

    def check(self, name: str) -> None:
        """Nothing to check before reading: `read` looks at the file itself."""

    def read(self, name: str) -> bytes:
        """The bytes of `name`, refusing anything but a regular file (a FIFO would block forever, a
        link to /dev/zero never end) and files over `MAX_FILE_BYTES`."""
        path = self.path / name
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                raise DataError(f"{path}: not a regular file (a folder, FIFO, device or socket); expected a PNG")
            with path.open("rb") as handle:
                return read_bounded(handle, str(path))
        except FileNotFoundError:
            raise DataError(f"{path}: file is missing; was the folder changed after the dataset was built?") from None
        except OSError as exc:  # a link loop, no permission, an I/O error
            raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_bounded(handle: Any, where: str, limit: int | None = None) -> bytes:
    """At most `limit` (default `MAX_FILE_BYTES`) bytes of `handle`, or a DataError: a size field
    that lies cannot exceed it."""
    limit = MAX_FILE_BYTES if limit is None else limit
    data = handle.read(limit + 1)
    if len(data) > limit:
        raise DataError(f"{where}: holds more than {limit:,} bytes, the limit for one image; is it a real slice PNG?")
    return bytes(data)


class SlicesSource:
    """The slices layout from a `ZipStore` or `FolderStore`."""

    def __init__(self, store: ZipStore | FolderStore) -> None:
        self.store = store

    def records(self) -> list[SliceRecord]:
        """Index the names: one record per image PNG, with its masks in rater order."""
        images: dict[tuple[str, str], str] = {}
        masks: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
        raters: dict[str, dict[int, str]] = defaultdict(dict)  # nodule -> rater -> its folder's name
        owner: dict[str, tuple[str, str]] = {}
        seen: set[str] = set()
        for name in self.store.names():
            match = _SLICE_NAME.match(name)
            if match is None:
                continue
            if name in seen:
                raise DataError(f"{self.store.label}: entry {name} is there twice; keep one copy (which is meant?)")
            seen.add(name)
            self.store.check(name)  # sizes and encryption, before anything is read
            nodule_dir = name[: match.start("folder")].rstrip("/")
            owner[nodule_dir] = (match["patient"], match["nodule"])
            key = (nodule_dir, match["slice"])
            if match["rater"] is None:
                images[key] = name
            else:
                rater = self._rater(nodule_dir, match["folder"], raters[nodule_dir])
                masks[key][rater] = name
        if not images:
            raise DataError(f"{self.store.label}: holds no LIDC slices; expected {LAYOUT}")
        return self._records(images, masks, raters, owner)

    def _rater(self, nodule_dir: str, folder: str, known: dict[int, str]) -> int:
        """The rater number of `folder` ("mask-<k>"), refusing a second folder of the same number
        ("mask-01" beside "mask-1"): one would replace or drop the other's masks."""
        digits = folder.removeprefix("mask-")
        if len(digits.lstrip("0")) > 9:
            raise DataError(f"{self.store.label}: {nodule_dir}/{folder}: rater number too long; name it mask-<k>")
        rater = int(digits)
        first = known.setdefault(rater, folder)
        if first != folder:
            raise DataError(
                f"{self.store.label}: {nodule_dir}/{first} and {nodule_dir}/{folder} are both rater {rater}; "
                "rename one (each rater needs its own mask-<k> number) or delete the copy"
            )
        return rater

    def _records(
        self,
        images: dict[tuple[str, str], str],
        masks: dict[tuple[str, str], dict[int, str]],
        raters: dict[str, dict[int, str]],
        owner: dict[str, tuple[str, str]],
    ) -> list[SliceRecord]:
        """One record per image, its masks in rater order; masks without images, missing masks and
        slices there twice refused."""
        for key in masks.keys() - images.keys():
            some = next(iter(masks[key].values()))
            raise DataError(
                f"{self.store.label}: mask {some} has no image {key[0]}/images/{key[1]}.png; add it or delete the mask"
            )
        records = []
        ids: dict[str, str] = {}
        for key in sorted(images, key=lambda k: (_natural(k[0]), _natural(k[1]))):
            nodule_dir, slice_name = key
            folders = raters.get(nodule_dir, {})
            need = sorted(folders)
            if not need:
                raise DataError(
                    f"{self.store.label}: {nodule_dir} has images but no mask-<k> folders; expected {LAYOUT}"
                )
            missing = [k for k in need if k not in masks[key]]
            if missing:
                raise DataError(
                    f"{self.store.label}: {nodule_dir}/{folders[missing[0]]}/{slice_name}.png is missing "
                    f"({folders[missing[0]]} has other slices of this nodule); every slice needs one PNG in each "
                    "mask-<k> folder"
                )
            patient, nodule = owner[nodule_dir]
            slice_id = f"{patient}/{nodule}/{slice_name}"
            if slice_id in ids:
                raise DataError(
                    f"{self.store.label}: slice {slice_id} is there twice ({ids[slice_id]} and "
                    f"{images[key]}); keep one copy of the tree, or it would be counted twice"
                )
            ids[slice_id] = images[key]
            records.append(
                SliceRecord(
                    id=slice_id,
                    group=patient,
                    image=images[key],
                    masks=tuple(masks[key][k] for k in need),
                    where=f"{self.store.label}:{images[key]}",
                )
            )
        return records

    def reference(self, record: SliceRecord) -> tuple[tuple[int, int], tuple[int, str] | None]:
        """The image size and (bit depth, file) of `record`, which every other slice must share;
        the slice is checked whole (its masks too), so a bad dataset fails when it is built."""
        image = self._image(record)
        self._masks(record, image.shape)
        return (int(image.shape[0]), int(image.shape[1])), (image.dtype.itemsize * 8, record.where)

    def _image(self, record: SliceRecord) -> np.ndarray:
        """The decoded image PNG of `record`, as stored (uint8 or uint16 [H, W])."""
        image = decode_png(self.store.read(record.image), where=record.where)
        if image.ndim != 2:
            raise DataError(
                f"{record.where}: image has shape {image.shape}; LIDC slices must be single-channel grey PNGs"
            )
        return image

    def read(
        self,
        record: SliceRecord,
        *,
        shape: tuple[int, int] | None = None,
        bits: tuple[int, str] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Decode the image ([H, W] float32 in [0, 1]) and masks ([H, W] uint8 0/1) of `record`;
        `shape` and `bits` (the dataset's image size and bit depth, see `reference`) are checked first."""
        where = record.where
        image = self._image(record)
        check_bits(image, bits, where=where)
        if shape is not None:
            check_shape(image.shape, shape, where=where, what="image")
        return unit_image(image, where=where), self._masks(record, image.shape)

    def _masks(self, record: SliceRecord, shape: tuple[int, ...]) -> list[np.ndarray]:
        """The masks of `record` as uint8 0/1 arrays of the image's `shape`."""
        masks = []
        for name in record.masks:
            mask_where = f"{self.store.label}:{name}"
            mask = decode_png(self.store.read(name), where=mask_where)
            check_shape(mask.shape, shape, where=mask_where, what="mask")
            masks.append(binary_mask(mask, where=mask_where))
        return masks


class PickleSource:
    """The pickle format: dicts slice-name -> {"image", "masks", "series_uid"}, checked on load."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)
        self._bits: tuple[int, str] | None = None  # the first integer image's bit depth, and where

    def records(self) -> list[SliceRecord]:
        seen: dict[str, Path] = {}
        records: list[SliceRecord] = []
        shape: tuple[int, ...] | None = None
        for path in self.files:
            content = safe_load(path)
            if not isinstance(content, dict):
                raise DataError(
                    f"{path}: holds a {type(content).__name__}; expected a dict slice-name -> "
                    "{'image': array, 'masks': [arrays], 'series_uid': str}"
                )
            for key in sorted(content, key=lambda k: _natural(str(k))):
                where = f"{path}[{key!r}]"
                if str(key) in seen:
                    raise DataError(f"{where}: slice name also used in {seen[str(key)]}; slice names must be unique")
                seen[str(key)] = path
                record = self._record(str(key), content[key], where)
                shape = shape or record.image.shape
                check_shape(record.image.shape, shape, where=where, what="image")
                records.append(record)
        check_nonempty(
            len(records),
            where=", ".join(map(str, self.files)),
            how="the pickle dict is empty; it must map slice names to {image, masks, series_uid}",
        )
        return records

    def _record(self, key: str, entry: Any, where: str) -> SliceRecord:
        if not isinstance(entry, dict):
            raise DataError(
                f"{where}: entry is a {type(entry).__name__}; expected a dict with image, masks, series_uid"
            )
        absent = [k for k in ("image", "masks", "series_uid") if k not in entry]
        if absent:
            raise DataError(
                f"{where}: missing key(s) {', '.join(absent)}; each entry needs 'image' (array), "
                "'masks' (list of binary arrays) and 'series_uid' (str, used as the patient group)"
            )
        image = _array(entry["image"], f"{where}['image']")
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 2 or 0 in image.shape:
            raise DataError(f"{where}: image has shape {image.shape}; expected a non-empty 2-D [H, W] array")
        check_bits(image, self._bits, where=f"{where}['image']")
        if self._bits is None and image.dtype.kind in "ui":
            self._bits = (image.dtype.itemsize * 8, f"{where}['image']")
        image = unit_image(image, where=f"{where}['image']")
        raw = entry["masks"]
        if not isinstance(raw, (list, tuple, np.ndarray)) or len(raw) == 0:
            raise DataError(f"{where}: 'masks' must be a non-empty list of [H, W] arrays")
        masks = []
        for k, mask in enumerate(raw):
            mask_where = f"{where}['masks'][{k}]"
            mask = _array(mask, mask_where)
            check_shape(mask.shape, image.shape, where=mask_where, what="mask")
            masks.append(binary_mask(mask, where=mask_where))
        uid = entry["series_uid"]
        uid = uid.decode() if isinstance(uid, bytes) else str(uid)
        return SliceRecord(id=key, group=uid, image=image, masks=tuple(masks), where=where)

    @staticmethod
    def reference(record: SliceRecord) -> tuple[tuple[int, int], tuple[int, str] | None]:
        """The image size of `record`; bit depths were checked when the files were loaded."""
        return (int(record.image.shape[0]), int(record.image.shape[1])), None

    @staticmethod
    def read(
        record: SliceRecord, *, shape: tuple[int, int] | None = None, bits: tuple[int, str] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The checked arrays of `record` (shapes and depths were checked when the files were loaded)."""
        return record.image, list(record.masks)


def _array(value: Any, where: str) -> np.ndarray:
    """`value` as a numeric numpy array, or a DataError (ragged lists, more than 32 dims, objects)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise DataError(f"{where}: not an array ({str(exc).split('.')[0]}); expected a [H, W] numeric array") from None
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: holds {array.dtype} values; expected a [H, W] numeric array")
    return array


def open_source(root: str | os.PathLike[str]) -> SlicesSource | PickleSource:
    """Find the format under `root`: a zip, a pickle, a folder of pickles, the slices folder or its parent."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"lidc root '{path}' does not exist; pass root= the lidc-idri-slices.zip, the "
            "LIDC-IDRI-slices folder (or its parent), or a folder of *.pickle files"
        )
    if path.is_file():
        return PickleSource([path]) if path.suffix.lower() in PICKLE_SUFFIXES else SlicesSource(ZipStore(path))
    if not path.is_dir():
        raise DataError(
            f"lidc root '{path}' is neither a file nor a folder (a FIFO, socket or device); pass the "
            "lidc-idri-slices.zip, the LIDC-IDRI-slices folder (or its parent), or a folder of *.pickle files"
        )
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        return PickleSource(pickles)
    for candidate in (path / "LIDC-IDRI-slices", path):
        if candidate.is_dir() and next(candidate.glob("*/*/images"), None) is not None:
            return SlicesSource(FolderStore(candidate))
    zips = sorted(path.glob("*.zip"))
    if len(zips) == 1:
        return SlicesSource(ZipStore(zips[0]))
    raise DataError(f"{path}: found no LIDC data ({LAYOUT}, a single *.zip of it, or *.pickle files)")


@datasets.register("lidc", description="LIDC-IDRI slices (zip or folder) or pickle crops; patient-level splits")
class LidcDataset(AnnotatedDataset):
    """LIDC-IDRI crops with every rater's mask; see the module docstring for the formats."""

    def __init__(
        self,
        *,
        root: str | None = None,
        split: str = "train",
        seed: int = 0,
        fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
        num_annotators: int | None = None,
        limit: int | None = None,
        spread: bool = False,
        crop: int | None = None,
    ) -> None:
        """
        Args:
            root: the zip, the LIDC-IDRI-slices folder or its parent, a pickle or a folder of
                pickles; default: the AMBISEG_LIDC environment variable.
            split: "train", "val", "test" (by patient) or "all".
            seed: seed of the patient split (and of `limit`'s subset).
            fractions: train/val/test fractions of the patients.
            num_annotators: keep slices with at least this many masks (their first ones);
                default: every slice must have the same number of masks.
            limit: keep a seeded random subset of this many slices of the split.
            spread: the `limit` subset holds a slice of every patient of the split (then random).
            crop: keep the central `crop` x `crop` pixels (the crops are centred on the nodule;
                at 64 of 128 px, 0.15% of the lesion pixels of the seed-0 training split fall
                outside, see docs/training.md); None keeps the whole slice.
        """
        root = root or os.environ.get(ENV_VAR)
        if not root:
            raise DataError(
                f"lidc needs root= (or the {ENV_VAR} environment variable): the path of "
                "lidc-idri-slices.zip, the LIDC-IDRI-slices folder, or *.pickle files; see docs/data.md"
            )
        self.name, self.split = "lidc", check_split(split)
        self.source = open_source(root)
        records = self._pick_annotators(self.source.records(), num_annotators, where=str(root))
        chosen = split_indices(
            [r.group for r in records], split, seed=seed, fractions=fractions, where=f"lidc at {root}"
        )
        keep = subset(chosen, limit, seed=seed, groups=[records[i].group for i in chosen] if spread else None)
        self.records = [records[i] for i in keep]
        self.ids = [r.id for r in self.records]
        self.groups = [r.group for r in self.records]
        self.num_annotators = len(self.records[0].masks)
        self.in_channels = 1
        # the first slice of the whole dataset sets size and bit depth, so every split agrees
        self.stored_shape, self.stored_bits = self.source.reference(records[0])
        if crop is not None and not 1 <= crop <= min(self.stored_shape):
            raise ConfigError(
                f"lidc: crop must be between 1 and {min(self.stored_shape)} (the slices are "
                f"{self.stored_shape[0]}x{self.stored_shape[1]}), got {crop}"
            )
        self.crop = crop
        self.image_shape = (crop, crop) if crop is not None else self.stored_shape

    @staticmethod
    def _pick_annotators(records: list[SliceRecord], wanted: int | None, *, where: str) -> list[SliceRecord]:
        counts = Counter(len(r.masks) for r in records)
        if wanted is None:
            if len(counts) > 1:
                odd = next(r for r in records if len(r.masks) != counts.most_common(1)[0][0])
                raise DataError(
                    f"{where}: slices have different numbers of masks (masks: slices = {dict(sorted(counts.items()))}; "
                    f"e.g. {odd.id} has {len(odd.masks)}); pass num_annotators=N to keep slices with at least N masks"
                )
            return records
        if wanted < 1:
            raise ConfigError(f"lidc: num_annotators must be >= 1, got {wanted}")
        kept = [dataclasses.replace(r, masks=r.masks[:wanted]) for r in records if len(r.masks) >= wanted]
        check_nonempty(
            len(kept), where=where, how=f"no slice has {wanted} masks (counts: {dict(sorted(counts.items()))})"
        )
        return kept

    def _load(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image, mask_list = self.source.read(record, shape=self.stored_shape, bits=self.stored_bits)
        masks = np.stack(mask_list)
        if self.crop is not None:
            top, left = (self.stored_shape[0] - self.crop) // 2, (self.stored_shape[1] - self.crop) // 2
            image = image[top : top + self.crop, left : left + self.crop]
            masks = masks[:, top : top + self.crop, left : left + self.crop]
        return {
            "image": torch.from_numpy(np.array(image, dtype=np.float32))[None],  # a copy: records stay intact
            "masks": torch.from_numpy(np.ascontiguousarray(masks)),
            "id": record.id,
            "group": record.group,
        }
