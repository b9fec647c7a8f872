"""How many field evaluations a trained flow needs: quality and time against sampler and steps.

For each checkpoint (e.g. ATFM, whose flow starts from the GTR's sample, and SFM, which starts
from noise) and each (sampler, steps), the run's own data split is scored as `ambiseg eval`
does (same per-image seeds), and each setting's per-image GED is compared with the reference
setting's (default euler, 25 steps) by a paired bootstrap interval over images.

    python benchmarks/steps_study.py CKPT [CKPT ...] --split val --samples 16,32 \
        --samplers euler:1,2,3,5,10,25 midpoint:1,2,3,5 heun:1,2,3,5 --out docs/figures/steps-lidc

Writes OUT.json (every number), OUT.md (the table) and OUT.png (GED and HM-IoU against NFE).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambiseg.checkpoint import load_method
from ambiseg.data.spec import DataSpec
from ambiseg.evaluation import InferenceOptions, evaluate_method
from ambiseg.results import bootstrap_ci


def parse_grid(items: list[str]) -> list[tuple[str, int]]:
    """["euler:1,2", "heun:3"] -> [("euler", 1), ("euler", 2), ("heun", 3)]."""
    grid = []
    for item in items:
        name, _, steps = item.partition(":")
        grid += [(name, int(s)) for s in steps.split(",")]
    return grid


def study(
    path: Path, split: str, grid: list[tuple[str, int]], counts: tuple[int, ...], settings: dict[str, Any]
) -> list[dict]:
    rows, data = [], None
    for sampler, steps in grid:
        method, ckpt = load_method(path, overrides={"sampler": {"name": sampler, "steps": steps}})
        if data is None:
            spec = DataSpec.from_dict(ckpt.meta["data"], where=str(path))
            data = spec.with_settings(settings).build(split)
        result = evaluate_method(
            method, data, counts=counts, seed=0, device=torch.device("cpu"), options=InferenceOptions()
        )
        per_image = {k: result["per_image"][k] for k in result["per_image"] if k.startswith(("GED", "HM-IoU"))}
        rows.append(
            {
                "checkpoint": str(path),
                "method": method.name,
                "sampler": sampler,
                "steps": steps,
                "nfe": method.sampler.nfe,
                "seconds_per_image": float(np.mean(result["sample_seconds"])),
                "samples": max(counts),
                "images": len(data),
                "per_image": per_image,
            }
        )
        means = {k: round(float(np.mean(v)), 4) for k, v in per_image.items()}
        seconds = rows[-1]["seconds_per_image"]
        print(f"{method.name} {sampler}-{steps} (nfe {method.sampler.nfe}): {means}, {seconds:.3f} s/image", flush=True)
    return rows


def table(rows: list[dict], metric: str, reference: tuple[str, int]) -> str:
    name = f"{reference[0]}-{reference[1]}"
    lines = [
        f"| method | sampler | steps | NFE | {metric} | minus {name} [95%] | {_hm_key(rows)} | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    hm = _hm_key(rows)
    for row in rows:
        ref = next(r for r in rows if r["method"] == row["method"] and (r["sampler"], r["steps"]) == reference)
        diff = np.asarray(row["per_image"][metric]) - np.asarray(ref["per_image"][metric])
        lo, hi = bootstrap_ci(diff)
        lines.append(
            f"| {row['method']} | {row['sampler']} | {row['steps']} | {row['nfe']} | "
            f"{np.mean(row['per_image'][metric]):.3f} | {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | "
            f"{np.mean(row['per_image'][hm]):.3f} | {row['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict], metric: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hm = _hm_key(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (method, sampler), group in _groups(rows).items():
        nfe = [r["nfe"] for r in group]
        for ax, key in zip(axes, (metric, hm), strict=True):
            ax.plot(nfe, [np.mean(r["per_image"][key]) for r in group], marker="o", label=f"{method} {sampler}")
    for ax, key in zip(axes, (metric, hm), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("field evaluations per sample (NFE)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def _hm_key(rows: list[dict]) -> str:
    """HM-IoU at the largest sample count."""
    return max((k for k in rows[0]["per_image"] if k.startswith("HM-IoU")), key=lambda k: int(k[6:]))


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["sampler"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["nfe"]) for k, v in groups.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--replot", type=Path, help="re-render the table and figure from a saved OUT.json")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None, help="first N images of the split")
    parser.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="data setting, e.g. data.sizes=[400,64,16]"
    )
    parser.add_argument("--samples", default="16,32")
    parser.add_argument("--samplers", nargs="+", default=["euler:1,2,3,5,10,25", "midpoint:1,2,3,5", "heun:1,2,3,5"])
    parser.add_argument("--reference", default="euler:25")
    parser.add_argument("--out", type=Path, required=True, help="path stem of the .json/.md/.png outputs")
    args = parser.parse_args()
    counts = tuple(int(c) for c in args.samples.split(","))
    grid = parse_grid(args.samplers)
    ref_name, _, ref_steps = args.reference.partition(":")
    reference = (ref_name, int(ref_steps))
    if reference not in grid:
        grid.append(reference)
    settings = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.data)}
    if args.limit:
        settings[f"data.{args.split}.limit"] = args.limit
    rows: list[dict[str, Any]] = json.loads(args.replot.read_text())["rows"] if args.replot else []
    for path in args.checkpoints:
        rows += study(path, args.split, grid, counts, settings)
    metric = f"GED{max(counts)}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.replot:
        args.out.with_suffix(".json").write_text(
            json.dumps(
                {
                    "args": vars(args) | {"out": str(args.out), "checkpoints": [str(p) for p in args.checkpoints]},
                    "rows": rows,
                }
            )
        )
    text = table(rows, metric, reference)
    args.out.with_suffix(".md").write_text(text + "\n")
    figure(rows, metric, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
