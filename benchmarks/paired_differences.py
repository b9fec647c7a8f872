"""Paired per-image differences between bench records and reference rows, with 95% intervals.

Each method's per-image GED100 minus the other row's on the same test images: an interval below
zero means the method is better. With several seeds the differences are [seeds, images] (seeds
both rows have; a reference row serves every seed) and the bootstrap resamples images and seeds
(`ambiseg.results.bootstrap_ci`). Images where either side is NaN (a metric undefined there, e.g.
MissedConsensus where a rater marks nothing) are left out; records without the metric are skipped.

    python benchmarks/paired_differences.py benchmarks/results/lidc-cpu-v2 --metric GED100
    python benchmarks/paired_differences.py benchmarks/results/lidc-v1 --seeds 0    # one seed's differences
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ambiseg.cli.options import parse_ints
from ambiseg.leaderboard import newest_records
from ambiseg.results import bootstrap_ci, finite_values, of_seeds, read_records


def _line(method: str, other: str, diff: np.ndarray) -> str:
    kept = finite_values(diff)  # [seeds, images] (or [images]) where both sides are defined
    if kept.size == 0:
        return f"| {method} | {other} | - | undefined on every image |"
    lo, hi = bootstrap_ci(kept)
    return f"| {method} | {other} | {kept.mean():+.3f} | [{lo:+.3f}, {hi:+.3f}] |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="holds results/*.json and reference.json")
    parser.add_argument("--metric", default="GED100")
    parser.add_argument("--against", default="det-unet,union,majority", help="rows to compare every method with")
    parser.add_argument("--seeds", default=None, help="only these training seeds, e.g. 0 or 0,1 (default: all)")
    args = parser.parse_args()
    seeds = None if args.seeds is None else parse_ints(args.seeds, "--seeds")
    everything = of_seeds(read_records([args.folder / "results"]), seeds)
    records = {(r["method"], int(r["seed"])): r for r in newest_records(everything) if not r.get("reference")}
    rows: dict[str, dict[int, np.ndarray]] = {}  # method -> seed -> per-image values
    for (method, seed), r in records.items():
        if args.metric in r["per_image"]:  # records written before a metric existed lack it
            rows.setdefault(method, {})[seed] = np.asarray(r["per_image"][args.metric], dtype=np.float64)
    if (args.folder / "reference.json").exists():  # v2/v3 folders: benchmarks/reference_rows.py
        reference = json.loads((args.folder / "reference.json").read_text())["per_image"]
        reference = {name: values[args.metric] for name, values in reference.items() if args.metric in values}
    else:  # rows the bench wrote (ref:*), named here without the prefix
        reference = {
            r["method"].removeprefix("ref:"): r["per_image"][args.metric]
            for r in everything
            if r.get("reference") and args.metric in r["per_image"]
        }
    fixed = {name: np.asarray(values, dtype=np.float64) for name, values in reference.items()}
    print(f"| method | vs | mean {args.metric} difference | 95% interval |")
    print("|---|---|---|---|")
    for method in sorted(rows):
        mine = rows[method]
        for other in args.against.split(","):
            if other == method or (other not in rows and other not in fixed):
                continue
            shared = sorted(mine) if other in fixed else sorted(set(mine) & set(rows[other]))
            if shared:
                theirs = [fixed[other] if other in fixed else rows[other][s] for s in shared]
                print(_line(method, other, np.stack([mine[s] - t for s, t in zip(shared, theirs, strict=True)])))
    # trained minus the same method's untrained weights, at the untrained evaluation's sample count
    untrained: dict[tuple[str, str], list[np.ndarray]] = {}
    for (method, _), rec in sorted(records.items()):
        for key, values in rec.get("untrained_per_image", {}).items():
            untrained.setdefault((method, key), []).append(np.asarray(rec["per_image"][key]) - np.asarray(values))
    for (method, key), diffs in untrained.items():
        print(_line(method, f"own untrained weights ({key})", np.stack(diffs)))


if __name__ == "__main__":
    main()
