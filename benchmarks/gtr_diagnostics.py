"""Why a GTR does or does not learn LIDC: validation curves plus the Gaussian's own statistics.

Trains the `act-gtr` recipe (GTR + sigmoid) on LIDC and every `--every` steps prints one JSON
line: validation GED16 / HM-IoU16 / diversity, the mean logit (average and maximum), the
diagonal standard deviation, the covariance factor's norm per pixel and the norm of its
spatial mean (`factor_global`: a factor column that is constant over the pixels shifts the
whole logit map, so its samples are empty or cover the whole image), and the fraction of
samples that are empty or cover > 90% of the image. docs/training.md shows what it found.

    python benchmarks/gtr_diagnostics.py --root ../shared/data/lidc-idri-slices.zip \
        --steps 300 --every 50 --set prior.centre_factor=true --out centred.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ambiseg import metrics
from ambiseg.cli.options import parse_sets
from ambiseg.data import DataSpec
from ambiseg.recipes import build_for_data
from ambiseg.runtime import collate, seed_everything
from ambiseg.train import make_optimizer


def gaussian_stats(method, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Validation metrics of 16 samples and the statistics of the GTR's Gaussian."""
    with torch.no_grad():
        state = method.prior.condition(images)
        samples = method.sample(images, 16, generator=torch.Generator().manual_seed(1))
        foreground = (samples >= 0.5).float().mean((2, 3))
        factor = state.cov_factor
        return {
            "ged16": metrics.ged(samples, masks).mean().item(),
            "hm16": metrics.hm_iou(samples, masks).mean().item(),
            "div16": metrics.sample_diversity(samples, masks).mean().item(),
            "mu_mean": state.mean.mean().item(),
            "mu_max": state.mean.max().item(),
            "sd_diag": state.cov_diag.sqrt().mean().item(),
            "factor_pix": factor.norm(dim=-1).mean().item(),
            "factor_global": factor.mean(1).norm(dim=-1).mean().item(),
            "frac_full": (foreground > 0.9).float().mean().item(),
            "frac_empty": (foreground == 0).float().mean().item(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="lidc-idri-slices.zip")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--val", type=int, default=48, help="validation slices")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="method override, e.g. prior.norm=group"
    )
    parser.add_argument("--out", required=True, help="JSON file of the rows")
    args = parser.parse_args()

    spec = DataSpec(name="lidc", root=args.root, preset="cpu").with_settings(
        {"data.val.limit": args.val, "data.crop": args.crop}
    )
    sets = spec.build_splits(("train", "val"))
    seed_everything(0)
    method = build_for_data("act-gtr", sets["train"], preset="cpu", overrides=parse_sets(tuple(args.sets)))
    cfg = method.train_config["prior"]
    params = method.begin_stage("prior")
    optimizer = make_optimizer(cfg, params)
    val = collate([sets["val"][i] for i in range(len(sets["val"]))])
    order = torch.Generator().manual_seed(0)
    rows, step, start = [], 0, time.time()

    def record(loss: float) -> None:
        method.eval()
        row = {
            "step": step,
            "loss": loss,
            **gaussian_stats(method, val["image"], val["masks"]),
            "seconds": time.time() - start,
        }
        method.prior.train()
        rows.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    record(float("nan"))
    size, batch_size = len(sets["train"]), int(cfg["batch_size"])
    while step < args.steps:
        perm = torch.randperm(size, generator=order).tolist()
        for i in range(0, size - batch_size + 1, batch_size):
            optimizer.zero_grad()
            loss = method.loss(collate([sets["train"][j] for j in perm[i : i + batch_size]]), "prior")["loss"]
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.every == 0:
                record(loss.item())
            if step >= args.steps:
                break
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
