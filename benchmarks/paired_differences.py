"""Paired per-image differences between bench records and reference rows, with 95% intervals.

Each method's per-image GED100 minus the other row's on the same test images (bootstrap over
images, `ambiseg.results.bootstrap_ci`): an interval below zero means the method is better.

    python benchmarks/paired_differences.py benchmarks/results/lidc-cpu-v2 --metric GED100

Records of one seed per method (the v2/v3 folders, or one seed of a protocol folder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ambiseg.results import bootstrap_ci, read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="holds results/*.json and reference.json")
    parser.add_argument("--metric", default="GED100")
    parser.add_argument("--against", default="det-unet,union,majority", help="rows to compare every method with")
    args = parser.parse_args()
    everything = read_records([args.folder / "results"])
    records = [r for r in everything if not r.get("reference")]
    rows = {r["method"]: np.asarray(r["per_image"][args.metric]) for r in records}
    if (args.folder / "reference.json").exists():  # v2/v3 folders: benchmarks/reference_rows.py
        reference = json.loads((args.folder / "reference.json").read_text())["per_image"]
        reference = {name: values[args.metric] for name, values in reference.items()}
    else:  # rows the bench wrote (ref:*), named here without the prefix
        reference = {
            r["method"].removeprefix("ref:"): r["per_image"][args.metric] for r in everything if r.get("reference")
        }
    rows.update({name: np.asarray(values) for name, values in reference.items()})
    print(f"| method | vs | mean {args.metric} difference | 95% interval |")
    print("|---|---|---|---|")
    for method in sorted(r for r in rows if r not in reference):
        for other in args.against.split(","):
            if other == method or other not in rows:
                continue
            diff = rows[method] - rows[other]
            lo, hi = bootstrap_ci(diff)
            print(f"| {method} | {other} | {diff.mean():+.3f} | [{lo:+.3f}, {hi:+.3f}] |")
    # trained minus the same method's untrained weights, at the untrained evaluation's sample count
    for rec in sorted(records, key=lambda r: r["method"]):
        for key, untrained in rec.get("untrained_per_image", {}).items():
            diff = np.asarray(rec["per_image"][key]) - np.asarray(untrained)
            lo, hi = bootstrap_ci(diff)
            print(f"| {rec['method']} | own untrained weights ({key}) | {diff.mean():+.3f} | [{lo:+.3f}, {hi:+.3f}] |")


if __name__ == "__main__":
    main()
