"""Where a deterministic map model's probabilities land on the LIDC validation slices.

For each `det-unet` checkpoint: the BCE to the raters' pixel-wise mean (what it is trained on,
summed over pixels, mean over slices) and the mean probability on the pixels that at least 3 of
4 raters mark. The 0.5-threshold of that probability decides whether its masks are empty, so the
two numbers separate "fits badly" from "fits, but below the threshold" (docs/training.md
section 5).

    python benchmarks/map_calibration.py benchmarks/results/lidc-v1/runs/det-unet-lidc-cpu-seed*/last.safetensors \
        --root ../shared/data/lidc-idri-slices.zip
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from ambiseg.bench import BenchSpec
from ambiseg.checkpoint import load_method


def calibration(path: str, val) -> dict[str, float]:
    """BCE to the raters' mean and mean probability where >= 3 of 4 raters mark, over `val`."""
    model, _ = load_method(path)
    model.eval()
    bce, agreed = [], []
    with torch.no_grad():
        for i in range(len(val)):
            item = val[i]
            logits = model.transport.net(item["image"][None])
            target = item["masks"].float().mean(0).reshape(logits.shape)
            bce.append(F.binary_cross_entropy_with_logits(logits, target, reduction="sum").item())
            if (target >= 0.75).any():
                agreed.append(torch.sigmoid(logits)[target >= 0.75].mean().item())
    return {
        "val_bce_per_slice": sum(bce) / len(bce),
        "mean_prob_where_3_of_4_mark": sum(agreed) / len(agreed),
        "max_of_that_over_slices": max(agreed),
        "slices": len(bce),
        "slices_with_agreed_pixels": len(agreed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="det-unet (unet-map) checkpoints")
    parser.add_argument("--root", required=True, help="the LIDC zip")
    args = parser.parse_args()
    spec = BenchSpec(methods=["det-unet"], data="lidc", root=args.root, preset="cpu", protocol="lidc-v1")
    val = spec.data_spec().build("val")
    print(json.dumps({path: calibration(path, val) for path in args.checkpoints}, indent=1))


if __name__ == "__main__":
    main()
