"""Time `evaluate_method` on the first N images of a checkpoint's own test split: sample seconds
per image and the mean of each GED, so two code versions (or inference options) can be compared
on the same model, images and seeds.

    python benchmarks/time_eval.py CKPT --images 20 --samples 100 [--steps K] [--channels-last] [--image-batch 8]

Runs with whatever `ambiseg` is importable: point PYTHONPATH at a checkout of another commit
(`git worktree add /tmp/old COMMIT`) to time that version; options it lacks are not passed.
"""

from __future__ import annotations

import argparse
import inspect
import json
from typing import Any

import numpy as np
import torch

from ambiseg import evaluation
from ambiseg.checkpoint import load_method
from ambiseg.data.spec import DataSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--image-batch", type=int, default=None)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the checkpoint's)")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    overrides = {"sampler": {"steps": args.steps}} if args.steps else None
    method, ckpt = load_method(args.checkpoint, overrides=overrides)
    spec = DataSpec.from_dict(ckpt.meta["data"]).with_settings({"data.test.limit": args.images})
    data = spec.build("test")
    kwargs: dict[str, Any] = {}
    if "options" in inspect.signature(evaluation.evaluate_method).parameters:
        opts = {"channels_last": args.channels_last}
        if args.image_batch:
            opts["image_batch"] = args.image_batch
        kwargs["options"] = evaluation.InferenceOptions(**opts)
    elif args.channels_last or args.image_batch:
        raise SystemExit("this version of ambiseg has no inference options")
    result = evaluation.evaluate_method(
        method, data, counts=(args.samples,), seed=0, device=torch.device("cpu"), **kwargs
    )
    ged = f"GED{args.samples}"
    print(
        json.dumps(
            {
                "label": args.label,
                "images": len(data),
                "threads": torch.get_num_threads(),
                "sample_s_per_image": float(np.mean(result["sample_seconds"])),
                ged: float(np.mean(result["per_image"][ged])),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
