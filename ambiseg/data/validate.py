"""Checks shared by every dataset: binary masks, finite unit-range images, shapes, non-empty.

Each check raises `DataError` with the file or key it looked at (`where`), what it found and
how to fix it, so a bad dataset fails with one readable line instead of a NaN loss later.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, closest

__all__ = ["SPLITS", "check_split", "binary_mask", "unit_image", "check_shape", "check_nonempty", "decode_png"]

SPLITS = ("train", "val", "test", "all")


def check_split(split: str) -> str:
    """`split` if it is one of `SPLITS`, else a ConfigError with the closest name."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'{closest(str(split), SPLITS)}; choose one of {', '.join(SPLITS)}")
    return split


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


def decode_png(data: bytes | Path, *, where: str, mode: str | None = None) -> np.ndarray:
    """Decode a PNG/JPEG (bytes or path) to numpy: [H, W] for grey/indexed, [H, W, 3] for RGB.

    `mode` (a PIL mode such as "RGB" or "L") converts first; without it grey ("L", "1",
    "I;16"), palette-indexed ("P", read as the indices) and "RGB" files are read as they are.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            if img.mode not in ("1", "L", "P", "I;16", "RGB"):
                raise DataError(f"{where}: unsupported image mode {img.mode!r}; save it as 8-bit grey or RGB")
            return np.array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode image ({exc}); the file is corrupt or not an image") from None
