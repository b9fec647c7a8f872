"""Checks shared by every dataset: binary masks, finite unit-range images, shapes, non-empty.

Each check raises `DataError` with the file or key it looked at (`where`), what it found and
how to fix it, so a bad dataset fails with one readable line instead of a NaN loss later.
"""

from __future__ import annotations

import io
import operator
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, closest

__all__ = [
    "SPLITS",
    "MAX_SIDE",
    "MAX_ITEMS",
    "MAX_ANNOTATORS",
    "MAX_DATA_SEED",
    "check_split",
    "check_count",
    "check_data_seed",
    "check_bits",
    "binary_mask",
    "unit_image",
    "check_shape",
    "check_nonempty",
    "decode_png",
]

SPLITS = ("train", "val", "test", "all")
MAX_SIDE = 2048  # pixels a dataset may generate or resize an image side to (a 40000 px side needs 12 GB per array)
MAX_ITEMS = 1_000_000  # items a generated split may hold
MAX_ANNOTATORS = 64  # masks a generated item may hold
MAX_DATA_SEED = 2**64 - 1


def check_split(split: str) -> str:
    """`split` if it is one of `SPLITS`, else a ConfigError with the closest name."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'{closest(str(split), SPLITS)}; choose one of {', '.join(SPLITS)}")
    return split


def check_count(value: int, low: int, high: int, *, where: str) -> int:
    """`value` if it is an integer in low..high, else a ConfigError naming `where` and the bounds."""
    try:
        number = operator.index(value)  # ints and numpy integers, not floats or strings
    except TypeError:
        number = None
    if isinstance(value, bool) or number is None or not low <= number <= high:
        raise ConfigError(f"{where} must be an integer between {low:,} and {high:,}, got {value!r}")
    return number


def check_data_seed(seed: int, *, where: str = "data.seed") -> int:
    """A split seed: an integer in 0..MAX_DATA_SEED (numpy refuses negative seeds with a traceback)."""
    return check_count(seed, 0, MAX_DATA_SEED, where=where)


def check_bits(image: np.ndarray, reference: tuple[int, str] | None, *, where: str) -> None:
    """Refuse an integer image whose bit depth differs from the dataset's (`reference`: bits and a file
    that has them): a 16-bit file holding 0..255 among 8-bit ones would be read near-black."""
    if reference is None or image.dtype.kind not in "ui":
        return
    bits, example = reference
    if image.dtype.itemsize * 8 != bits:
        raise DataError(
            f"{where}: {image.dtype.itemsize * 8}-bit image, but the dataset's images are {bits}-bit "
            f"(e.g. {example}); re-save it with the others' bit depth (mixed depths are read at different scales)"
        )


def binary_mask(mask: np.ndarray, *, where: str) -> np.ndarray:
    """A mask holding only {0, 1} or only {0, 255} (or bool) as uint8 0/1, same shape.

    Anything else (grey levels from lossy compression or resizing, NaN, labels > 1) is refused:
    silently thresholding would hide a broken export.
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if mask.dtype.kind not in "uif":
        raise DataError(f"{where}: mask has dtype {mask.dtype}; masks must be numeric or bool arrays of 0/1")
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise DataError(f"{where}: mask contains NaN or inf; masks must hold only 0/1 or 0/255")
    values = np.unique(mask)
    if np.isin(values, (0, 1)).all():
        return (mask == 1).astype(np.uint8)
    if np.isin(values, (0, 255)).all():
        return (mask == 255).astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise DataError(
        f"{where}: mask is not binary (values {shown}); masks must hold only {{0, 1}} or {{0, 255}} "
        "-- re-export it as a lossless binary PNG/array"
    )


def unit_image(image: np.ndarray, *, where: str) -> np.ndarray:
    """An image as float32 in [0, 1]: uint8 / 255, uint16 / 65535, floats checked finite and in range."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype.kind != "f":
        raise DataError(f"{where}: image has dtype {image.dtype}; expected uint8, uint16 or float in [0, 1]")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise DataError(f"{where}: image contains NaN or inf; fix or drop this image")
    low, high = float(image.min()), float(image.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise DataError(
            f"{where}: float image has values in [{low:.4g}, {high:.4g}]; expected [0, 1] -- rescale it "
            "(e.g. (x - min) / (max - min)) before saving"
        )
    return np.clip(image, 0.0, 1.0)


def check_shape(shape: tuple[int, ...], expected: tuple[int, ...], *, where: str, what: str) -> None:
    """Raise when `shape != expected`, naming both."""
    if tuple(shape) != tuple(expected):
        raise DataError(
            f"{where}: {what} has shape {tuple(shape)} but {tuple(expected)} was expected; "
            "all images (and their masks) of a dataset must have the same size"
        )


def check_nonempty(count: int, *, where: str, how: str) -> None:
    """Raise when a dataset or split has no items; `how` says how to get some."""
    if count <= 0:
        raise DataError(f"{where}: no items; {how}")


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L")


def decode_png(data: bytes | Path, *, where: str, mode: str | None = None) -> np.ndarray:
    """Decode a PNG/JPEG (bytes or path) to numpy: [H, W] for grey, [H, W, 3] for colour.

    Values are decoded by the file's mode, never reinterpreted: grey ("L", "1") as uint8,
    16-bit grey as uint16 (`unit_image` scales it by 65535), palette files ("P") through their
    palette (grey when every entry is grey, else RGB). `mode` "RGB" converts colour and grey
    files, 16-bit ones scaled to 8 bits first. Other modes, and images over Pillow's
    decompression-bomb limit, are refused.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
                return _by_mode(img, mode, where)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{where}: image is too large to decode safely ({exc}); is it a real image?") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{where}: cannot decode image ({exc}); the file is corrupt or not an image") from None


def _by_mode(img: Any, mode: str | None, where: str) -> np.ndarray:
    """`img` (an open PIL image) as an array decoded by its mode; see `decode_png`."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode == "RGBA":
            raise DataError(f"{where}: palette image with transparency; save it as 8-bit grey or RGB")
        rgb = np.array(img)
        if (rgb == rgb[..., :1]).all() and mode != "RGB":
            return np.ascontiguousarray(rgb[..., 0])
        if mode not in (None, "RGB"):
            raise DataError(f"{where}: palette image with colours; save it as 8-bit grey")
        return rgb
    if img.mode in _SIXTEEN_BIT:
        grey = np.array(img).astype(np.uint16)
        if mode == "RGB":
            return np.repeat(np.round(grey / 257.0).astype(np.uint8)[..., None], 3, axis=-1)
        if mode not in (None, "I;16"):
            raise DataError(f"{where}: 16-bit image; save it as 8-bit {mode}")
        return grey
    if mode is not None and img.mode != mode:
        if img.mode not in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "YCbCr"):
            raise DataError(f"{where}: image mode {img.mode!r} cannot be read as {mode}; save it as 8-bit grey or RGB")
        img = img.convert(mode)
    if img.mode not in ("1", "L", "RGB"):
        raise DataError(f"{where}: unsupported image mode {img.mode!r}; save it as 8-bit grey or RGB")
    array = np.array(img)
    if 0 in array.shape:
        raise DataError(f"{where}: image is empty ({img.width} x {img.height})")
    return array
