"""Reference rows computed from the annotations alone, so a LIDC table shows its scale.

`ambiseg bench` writes these rows itself (`ambiseg.reference`, rows `ref:*`) beside its records;
this script writes them for a split of your choice into one JSON (the v2/v3 `reference.json`).

Every row is scored like a method (ambiseg.metrics.evaluate, S samples per image):
- `majority`: the pixel-wise majority of the raters (strictly more than half), every sample;
- `majority-tie`: at least half of the raters (2 of 4);
- `union`: every pixel any rater marked;
- `empty`: an empty mask;
- `raters`: S draws (seeded, with replacement) from the image's own rater masks, a lower bound
  no model can beat in expectation.

    python benchmarks/reference_rows.py --root ../shared/data/lidc-idri-slices.zip --preset cpu \
        --out benchmarks/results/lidc-cpu-v2/reference.json
"""

from __future__ import annotations

import argparse
import json

import torch

from ambiseg import metrics
from ambiseg.cli.options import parse_sets
from ambiseg.data import DataSpec
from ambiseg.reference import reference_samples
from ambiseg.results import summarise

COUNTS = (16, 32, 100)


def rows_for(masks: torch.Tensor, total: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each reference row's samples [1, total, H, W] (`ambiseg.reference`) plus `majority-tie`."""
    rows = {name.removeprefix("ref:"): samples for name, samples in reference_samples(masks, total, generator).items()}
    rows["majority-tie"] = (masks.float().sum(0) >= masks.shape[0] / 2).expand(total, *masks.shape[1:])[None]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--split", default="test")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="data.KEY=VALUE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = DataSpec(name="lidc", root=args.root, preset=args.preset).with_settings(parse_sets(tuple(args.sets)))
    data = spec.build(args.split)
    generator = torch.Generator().manual_seed(0)
    per_image: dict[str, dict[str, list[float]]] = {}
    for i in range(len(data)):
        masks = data[i]["masks"]
        for name, samples in rows_for(masks, max(COUNTS), generator).items():
            scores = metrics.evaluate(samples, masks[None], counts=COUNTS)
            for key, value in scores.items():
                per_image.setdefault(name, {}).setdefault(key, []).append(value.item())
    result = {
        "data": spec.to_dict(),
        "split": args.split,
        "images": len(data),
        "rows": {name: summarise(values) for name, values in per_image.items()},
        "per_image": {
            name: {k: per_image[name][k] for k in ("GED16", "GED32", "GED100", "HM-IoU32")} for name in per_image
        },
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    for name, summary in result["rows"].items():
        print(name, {k: round(summary[k]["mean"], 3) for k in ("GED16", "GED100", "HM-IoU32", "Diversity100")})


if __name__ == "__main__":
    main()
