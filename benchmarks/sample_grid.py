"""One test slice, its four annotations, and samples of every method of a bench folder, one row each.

    python benchmarks/sample_grid.py benchmarks/results/lidc-v1 --root ../shared/data/lidc-idri-slices.zip \
        --index 7 --samples 6 --out docs/figures/lidc-v1-samples.png

Each checkpoint `FOLDER/runs/<method>-*-seed0/last.safetensors` is loaded with its recorded config
(sampler included) and draws `--samples` samples of the same test slice of the folder's
protocol, seeded like the bench (`seed * 100_003 + index`), so the pictures are of the scored
samples. The top row holds the image and the annotations.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ambiseg.bench import BenchSpec
from ambiseg.checkpoint import load_method
from ambiseg.data.figures import save_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a bench --out folder (runs/ and results/)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--index", type=int, default=0, help="test item index")
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ckpts = sorted(args.folder.glob(f"runs/*-seed{args.seed}/last.safetensors"))
    if not ckpts:
        raise SystemExit(f"no runs/*-seed{args.seed}/last.safetensors under {args.folder}")
    record = json.loads(next((args.folder / "results").glob("*-seed*.json")).read_text())
    protocol = (record.get("protocol") or {}).get("name")
    spec = BenchSpec(methods=[], data=record["dataset"], root=args.root, preset=record["preset"], protocol=protocol)
    item = spec.data_spec().build("test")[args.index]
    masks = item["masks"].numpy()
    image = item["image"][0].numpy()
    rows: list[tuple[str, np.ndarray]] = []
    for path in ckpts:
        method, ckpt = load_method(path)
        if ckpt.meta.get("stage_index") != len(method.stages):
            print(f"skipped {path}: an unfinished run")
            continue
        generator = torch.Generator().manual_seed(args.seed * 100_003 + args.index)
        with torch.inference_mode():
            samples = method.sample(item["image"][None], args.samples, generator=generator)[0]
        rows.append((method.name, samples.float().numpy()))
    cols = max(1 + masks.shape[0], args.samples)
    fig = Figure(figsize=(1.3 * cols, 1.3 * (1 + len(rows)) + 0.3))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(rows), cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("image", fontsize=7)
    for k, mask in enumerate(masks):
        axes[0, 1 + k].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[0, 1 + k].set_title(f"rater {k + 1}", fontsize=7)
    for r, (name, samples) in enumerate(rows, start=1):
        for s, sample in enumerate(samples):
            axes[r, s].imshow(sample > 0.5, cmap="gray", vmin=0, vmax=1)
            if s == 0:
                axes[r, s].set_title(name, fontsize=7, loc="left")
    title = f"{protocol or record['dataset']} test slice {args.index} ({item['id']}), samples thresholded at 0.5"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, args.out, dpi=110)
    print(f"wrote {args.out} ({len(rows)} methods, {math.prod(axes.shape)} panels)")


if __name__ == "__main__":
    main()
