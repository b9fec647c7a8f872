"""Figures of one image: its annotations, its true modes (when known) and predicted samples.

`item_figure` draws rows of panels: the image and each annotator's mask over it; the true
modes with their probabilities (synthetic data); and any predicted samples `[S, H, W]`
(foreground probabilities, drawn over the image with a colour bar) a caller passes.
`save_figure` writes it atomically. Only the Agg canvas is used, never pyplot, so nothing
needs a display."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap, ListedColormap
from matplotlib.figure import Figure

from ..errors import ConfigError
from ..files import atomic_path
from .synthetic import MODE_NAMES

__all__ = ["item_figure", "figure_for_item", "save_figure"]

_OVERLAY = ListedColormap(["#ff3b30"])
_PANEL_INCHES = 1.8


def _probability_colours() -> LinearSegmentedColormap:
    """`plasma` fading out towards 0, so a sample's probability lies over the image and the image
    shows through where the sample sees background."""
    colours = colormaps["plasma"](np.linspace(0.0, 1.0, 256))
    colours[:, 3] = np.linspace(0.0, 0.9, 256)
    return LinearSegmentedColormap.from_list("probability over image", colours)


_PROBABILITY = _probability_colours()


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _display_image(image: Any) -> np.ndarray:
    """[C, H, W] or [H, W] -> [H, W] grey or [H, W, 3] RGB, clipped to [0, 1]."""
    image = _numpy(image).astype(np.float32)
    if image.ndim == 3:
        image = image[0] if image.shape[0] == 1 else rearrange(image[:3], "c h w -> h w c")
    return np.clip(image, 0.0, 1.0)


def item_figure(
    image: Any,
    masks: Any,
    *,
    modes: Any = None,
    mode_probs: Any = None,
    mode_names: Sequence[str] | None = None,
    samples: Any = None,
    title: str | None = None,
    columns: int = 6,
) -> Figure:
    """A figure of one image with its annotations, true modes and predicted samples.

    Args:
        image: [C, H, W] (C = 1 or 3) or [H, W], values in [0, 1].
        masks: [A, H, W] annotator masks (0/1, bool or probabilities > 0.5 shown).
        modes: optional [K, H, W] true modes; `mode_probs` [K] their probabilities.
        mode_names: optional K names shown with the probabilities.
        samples: optional [S, H, W] predicted foreground probabilities in [0, 1], drawn over the
            image (transparent at 0) with their 0.5 contour and one colour bar.
        title: figure title.
        columns: most panels per row; longer groups wrap onto further rows.

    Returns:
        A matplotlib Figure on an Agg canvas (save it with `save_figure`).
    """
    if columns < 2:
        raise ConfigError(f"columns must be >= 2, got {columns}")
    shown = _display_image(image)
    grey = shown.ndim == 2
    panels: list[tuple[str, np.ndarray | None, str]] = [("image", None, "image")]
    for k, mask in enumerate(_numpy(masks)):
        panels.append((f"annotator {k + 1}" + ("" if mask.any() else " (empty)"), mask > 0.5, "overlay"))
    groups = [panels]
    if modes is not None:
        probs = _numpy(mode_probs) if mode_probs is not None else None
        mode_panels: list[tuple[str, np.ndarray | None, str]] = []
        for k, mode in enumerate(_numpy(modes)):
            name = mode_names[k] if mode_names is not None and k < len(mode_names) else f"mode {k + 1}"
            label = name if probs is None else f"{name} p={float(probs[k]):.2f}"
            mode_panels.append((label, mode > 0.5, "overlay"))
        groups.append(mode_panels)
    if samples is not None:
        groups.append(
            [
                (f"sample {s + 1}", np.asarray(sample, dtype=np.float32), "probability")
                for s, sample in enumerate(_numpy(samples))
            ]
        )

    columns = min(columns, max(len(group) for group in groups))
    rows = sum(math.ceil(len(group) / columns) for group in groups)
    # constrained layout keeps every title clear of the row above it, and makes room for the colour bar
    width = columns * _PANEL_INCHES + (0.7 if samples is not None else 0)
    fig = Figure(figsize=(width, rows * _PANEL_INCHES + (0.4 if title else 0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    row = 0
    probability_axes, probability = [], None
    for group in groups:
        for start in range(0, len(group), columns):
            for col in range(columns):
                ax = axes[row, col]
                ax.set_axis_off()
                if start + col >= len(group):
                    continue
                label, data, kind = group[start + col]
                ax.imshow(shown, cmap="gray" if grey else None, vmin=0.0, vmax=1.0, interpolation="nearest")
                if kind == "probability" and data is not None:
                    probability = ax.imshow(data, cmap=_PROBABILITY, vmin=0.0, vmax=1.0, interpolation="nearest")
                    if data.min() < 0.5 < data.max():  # the mask the sample gives (probability >= 0.5)
                        ax.contour(data, levels=[0.5], colors="white", linewidths=0.8)
                    probability_axes.append(ax)
                elif data is not None:
                    ax.imshow(
                        np.ma.masked_where(~data, data),
                        cmap=_OVERLAY,
                        alpha=0.5,
                        vmin=0,
                        vmax=1,
                        interpolation="nearest",
                    )
                ax.set_title(label, fontsize=8)
            row += 1
    if probability is not None:
        bar = fig.colorbar(probability, ax=probability_axes, shrink=0.9, aspect=30)
        bar.set_label("foreground probability (white: 0.5)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def figure_for_item(
    item: dict[str, Any],
    *,
    samples: Any = None,
    mode_names: Sequence[str] | None = None,
    title: str | None = None,
    columns: int = 6,
) -> Figure:
    """`item_figure` for a dataset item (uses its "modes"/"mode_probs" keys when present).

    `mode_names` defaults to the synthetic dataset's names when the item has that many modes.
    """
    modes = item.get("modes")
    if mode_names is None and modes is not None and len(modes) == len(MODE_NAMES):
        mode_names = MODE_NAMES
    return item_figure(
        item["image"],
        item["masks"],
        modes=modes,
        mode_probs=item.get("mode_probs"),
        mode_names=mode_names,
        samples=samples,
        title=title or item.get("id"),
        columns=columns,
    )


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write `fig` to `path` atomically (temp file in the same folder, then os.replace).

    The format comes from the suffix (png, pdf, svg, jpg, ...); a reader never sees a half file.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"cannot write a figure as '.{fmt}' ({path}); use one of: {', '.join(sorted(supported))}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path
