"""Train a flow on a trained GTR and follow it against the GTR alone, on validation slices.

The study behind the `cpu-lidc` flow settings (docs/training.md, "The flow against its own
prior"): the GTR of a finished run is frozen, a new flow transport (any `--set transport.*`,
`sampler.*`, `prior.temperature` override) is trained on it, and every `--val-every` steps both
the flow and the GTR alone (the same weights, identity transport) are scored on the same
validation slices with the same per-image generators, so the difference is the flow's own.

    python benchmarks/flow_study.py benchmarks/results/lidc-v1/runs/atfm-lidc-cpu-seed0/best.safetensors \
        --set transport.coupling=matched --steps 3000 --val-every 500 --val-images 200 --out runs/flow/matched

Writes OUT/config.json (the arguments and the method config), OUT/history.csv (one row per
validation: step, training seconds so far, loss terms, mean metrics of flow and GTR, and the
flow-minus-GTR paired difference of GED16, HM-IoU16, Diversity16, Stray, MissedConsensus and
SoftShare with 95% intervals), OUT/transport.safetensors (the flow's weights) and, with --final-steps,
OUT/euler-steps.csv (the trained flow scored again at other Euler step counts).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import save_file

from ambiseg.averaging import StageAverage
from ambiseg.checkpoint import load_checkpoint, load_method
from ambiseg.cli.options import parse_sets
from ambiseg.config import apply_overrides
from ambiseg.data.spec import DataSpec
from ambiseg.flow_effect import paired_difference, prior_only_twin
from ambiseg.method import Method
from ambiseg.metrics import evaluate
from ambiseg.runtime import collate
from ambiseg.samplers import FixedStepSampler
from ambiseg.train import learning_rate, make_optimizer

PAIRED = ("GED16", "HM-IoU16", "Diversity16", "Stray", "MissedConsensus", "SoftShare")


def score(method: Method, data: Any, n: int, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Per-image metrics of `samples` samples on the first `n` slices, per-image generators as `ambiseg eval`."""
    totals: dict[str, list[float]] = {}
    for start in range(0, n, 16):
        idx = list(range(start, min(n, start + 16)))
        batch = collate([data[i] for i in idx])
        gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in idx]
        out = method.sample(batch["image"], samples, generator=gens)
        for key, values in evaluate(out, batch["masks"], counts=(samples,)).items():
            totals.setdefault(key, []).extend(values.tolist())
    return {k: np.asarray(v, dtype=np.float64) for k, v in totals.items()}


def summary(flow: dict[str, np.ndarray], gtr: dict[str, np.ndarray]) -> dict[str, float]:
    """Flow means, and for `PAIRED` metrics the flow-minus-GTR difference with its 95% interval."""
    row = {f"flow_{k}": round(float(np.nanmean(v)), 4) for k, v in flow.items()}
    row |= {f"gtr_{k}": round(float(np.nanmean(v)), 4) for k, v in gtr.items()}
    for key, d in paired_difference({k: flow[k] for k in PAIRED}, {k: gtr[k] for k in PAIRED}).items():
        row |= {f"diff_{key}": round(d["diff"], 4), f"lo_{key}": round(d["lo"], 4), f"hi_{key}": round(d["hi"], 4)}
    return row


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a trained run whose prior (GTR) is kept frozen")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--schedule", default="constant")
    parser.add_argument("--ema", type=float, default=None, help="validate an EMA of the flow's weights (decay)")
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--val-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--final-steps",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[],
        help="after training, score the flow again with these Euler step counts, e.g. 2,5,10",
    )
    parser.add_argument("--keep-flow", action="store_true", help="start from the checkpoint's own flow weights")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.val_samples < 16:  # the paired metrics are the 16-sample ones (GED16, HM-IoU16, Diversity16)
        parser.error(f"--val-samples must be at least 16 (the study pairs GED16 and HM-IoU16), not {args.val_samples}")

    torch.manual_seed(args.seed)
    trained, ckpt = load_method(args.checkpoint)
    overrides = parse_sets(tuple(args.sets))
    method = Method.from_config(apply_overrides(trained.config, overrides))  # a fresh flow, unless --keep-flow
    method.prior.load_state_dict(trained.prior.state_dict())
    if args.keep_flow:
        method.transport.load_state_dict(trained.transport.state_dict())
    if args.final_steps and not isinstance(method.sampler, FixedStepSampler):  # before the training, not after it
        raise SystemExit(
            f"--final-steps needs a fixed-step sampler (euler, heun, ...), not {type(method.sampler).__name__}"
        )
    spec = DataSpec.from_dict(load_checkpoint(args.checkpoint).meta["data"], where=str(args.checkpoint))
    spec = spec.with_settings({"data.val.limit": args.val_images})
    train_set, val_set = spec.build("train"), spec.build("val")
    n_val = min(args.val_images, len(val_set))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(
        json.dumps(
            {"args": vars(args) | {"checkpoint": str(args.checkpoint), "out": str(args.out)}, "config": method.config},
            indent=1,
            default=str,
        )
    )
    twin = prior_only_twin(method)
    gtr = score(twin, val_set, n_val, args.val_samples, args.seed)
    print("GTR alone:", {k: round(float(np.nanmean(v)), 4) for k, v in gtr.items()}, flush=True)

    params = method.begin_stage("transport")
    cfg = {"optimizer": "adam", "lr": args.lr, "warmup": args.warmup, "schedule": args.schedule}
    opt = make_optimizer(cfg, params)
    average = StageAverage([method.transport], args.ema) if args.ema is not None else None
    rows, seconds, step = [], 0.0, 0
    terms: dict[str, float] = {}
    gen = torch.Generator().manual_seed(args.seed)

    def validate() -> None:
        method.eval()
        with average.applied() if average is not None else contextlib.nullcontext():
            flow = score(method, val_set, n_val, args.val_samples, args.seed)
        method.begin_stage("transport")
        row = {"step": step, "seconds": round(seconds, 1), **{k: round(v, 5) for k, v in terms.items()}}
        rows.append(row | summary(flow, gtr))
        shown = {k: rows[-1][f"diff_{k}"] for k in PAIRED}
        print(f"step {step} ({seconds:.0f} s) flow minus GTR:", shown, flush=True)
        write_csv(args.out / "history.csv", rows)

    validate()
    while step < args.steps:
        for group in torch.randperm(len(train_set), generator=gen).split(args.batch):
            if step >= args.steps:
                break
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, step, args.steps)
            out = method.loss(collate([train_set[int(i)] for i in group]), "transport")
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if average is not None:
                average.update()
            seconds += time.perf_counter() - t0
            terms = {k: float(v.detach()) for k, v in out.items()}
            step += 1
            if step % args.val_every == 0 or step == args.steps:
                validate()
    if average is not None:
        average.apply()
    save_file({k: v.contiguous() for k, v in method.transport.state_dict().items()}, args.out / "transport.safetensors")
    method.eval()
    sweep = []
    for steps in args.final_steps:
        cast(FixedStepSampler, method.sampler).steps = steps  # checked before the training
        sweep.append({"euler_steps": steps} | summary(score(method, val_set, n_val, args.val_samples, args.seed), gtr))
        print(f"euler {steps}: flow minus GTR", {k: sweep[-1][f"diff_{k}"] for k in PAIRED}, flush=True)
    if sweep:
        write_csv(args.out / "euler-steps.csv", sweep)


if __name__ == "__main__":
    main()
