"""Learning curves from `ambiseg train --log` CSVs: validation GED, HM-IoU and diversity vs step.

    python benchmarks/plot_curves.py --out docs/figures/gtr-lidc-curves.png \
        "centred + mean fit + GroupNorm=benchmarks/results/lidc-training/act-gtr-A.csv" ...
"""

from __future__ import annotations

import argparse
import csv

from matplotlib.figure import Figure

from ambiseg.data import save_figure

PANELS = (
    ("val_ged", "validation GED16 (lower is better)"),
    ("val_hm_iou", "validation HM-IoU16 (higher is better)"),
    ("val_diversity", "sample diversity (raters: dashed)"),
)


def read_curve(path: str) -> dict[str, list[float]]:
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_ged")]
    return {key: [float(r[key]) for r in rows] for key in ("step", *(k for k, _ in PANELS))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curves", nargs="+", help="LABEL=history.csv")
    parser.add_argument("--out", required=True)
    parser.add_argument("--raters", type=float, default=None, help="the raters' own diversity, drawn as a line")
    args = parser.parse_args()
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    for item in args.curves:
        label, _, path = item.rpartition("=")
        curve = read_curve(path)
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            ax.plot(curve["step"], curve[key], marker="o", markersize=3, label=label or path)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
        if key == "val_diversity" and args.raters is not None:
            ax.axhline(args.raters, color="k", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=7)
    save_figure(fig, args.out)


if __name__ == "__main__":
    main()
