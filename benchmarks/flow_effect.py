"""The flow's own effect: each ATFM checkpoint of a bench folder against its own GTR alone, per image.

    OMP_NUM_THREADS=1 python benchmarks/flow_effect.py --every 10      # every 10th lidc-v1 test slice
    OMP_NUM_THREADS=1 python benchmarks/flow_effect.py                 # all 500

Each checkpoint (default: the atfm and atfm-nosf runs of FOLDER) is rebuilt from its bench
record's config (the sampler the record was scored with) and loaded with its weights; the test
slices are the record's (its data spec, the protocol's slice ids checked), every --every-th of
them. Slice i is sampled with the generator seeded `seed * 100003 + i`, `seed` the run's training
seed, as `ambiseg eval --seed <seed>` does: by the method (whose values then equal the record's,
checked) and by its prior-only twin (`ambiseg.flow_effect.prior_only_twin`: the same GTR module
with the identity transport), whose samples are then the very GTR draws the flow started from.
Both are scored by `ambiseg.metrics.evaluate`; every metric it returns gets the paired per-image
difference method - twin with a 95% bootstrap interval, per checkpoint and pooled over seeds
(images and seeds resampled). Writes, atomically, OUT/flow-effect.json (per-image values of both
sides, the differences, the command), OUT/flow-effect.md (the tables) and, for the lowest seed of
each method, OUT/flow-effect-<method>.png: GTR draws beside what the flow makes of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ambiseg import metrics
from ambiseg.checkpoint import load_checkpoint, load_weights
from ambiseg.cli.options import parse_counts, parse_ints
from ambiseg.data.base import AnnotatedDataset
from ambiseg.data.figures import save_figure
from ambiseg.data.spec import DataSpec
from ambiseg.errors import AmbisegError, ConfigError
from ambiseg.evaluation import InferenceOptions, evaluate_method
from ambiseg.files import write_json, write_text
from ambiseg.flow_effect import check_flow_method, paired_difference, prior_only_twin, sample_with_sources
from ambiseg.leaderboard import newest_records
from ambiseg.method import Method
from ambiseg.protocols import get_protocol
from ambiseg.results import created_at, read_records

FOLDER = Path("benchmarks/results/lidc-v1")
SEED_STRIDE = 100_003  # generator of test image i: seed * SEED_STRIDE + i (ambiseg.evaluation)


@dataclasses.dataclass
class Run:
    """One checkpoint, rebuilt as its record scored it, with its test slices."""

    path: Path
    record: dict[str, Any]
    method: Method
    test: AnnotatedDataset

    @property
    def seed(self) -> int:
        return int(self.record["seed"])


def runs_of(folder: Path) -> list[dict[str, Any]]:
    """The bench records of `folder` (its results/), reference rows left out."""
    return [r for r in read_records([folder / "results"]) if not r.get("reference")]


def find_record(path: Path) -> dict[str, Any]:
    """The newest bench record (in the bench folder holding `path`, FOLDER/runs/<run>/) that names `path`."""
    folder = path.resolve().parents[2]
    found = [r for r in runs_of(folder) if Path(r.get("checkpoint") or "").resolve() == path.resolve()]
    if not found:
        raise AmbisegError(
            f"no record in {folder / 'results'} names checkpoint {path}; give checkpoints of a bench folder, "
            "run from the repository root (records name checkpoints relative to it)"
        )
    return max(found, key=created_at)  # by the instant: +00:00 and -05:00 stamps compare right


def checkpoint_record(path: Path, protocol: str) -> dict[str, Any]:
    """For a checkpoint no bench record names (an `ambiseg train` run): its own config, training
    seed and data, scored on `protocol`'s test slices as `ambiseg bench --protocol` would."""
    meta = load_checkpoint(path).meta
    data = DataSpec.from_dict(meta["data"], where=str(path)).with_settings(get_protocol(protocol).data_settings)
    return {
        "config": meta["config"],
        "seed": int(meta.get("seed", 0)),
        "data": data.to_dict(),
        "protocol": {"name": protocol},
        "created": None,
        "per_image": {},
    }


def load_run(path: Path, root: str | None, protocol: str | None = None) -> Run:
    """The checkpoint's method with its record's config, and the record's test split (`root` replaces its
    root); with `protocol`, a checkpoint without a record is scored on that protocol's slices."""
    try:
        record = find_record(path)
    except AmbisegError:
        if protocol is None:
            raise
        record = checkpoint_record(path, protocol)
    method = Method.from_config(record["config"])
    ckpt = load_checkpoint(path)
    check_flow_method(method)  # before any work: a method without a flow or a GTR-like prior is refused
    load_weights(method, ckpt, source=str(path), fix="the record's config does not build this checkpoint's network")
    if ckpt.meta.get("stage_index") != len(method.stages):
        raise AmbisegError(f"{path} holds an unfinished run; its scores would not be the trained method's")
    spec = DataSpec.from_dict(record["data"], where=f"the record of {path}")
    if root is not None:
        spec = dataclasses.replace(spec, root=root)
    test = spec.build("test")
    protocol = (record.get("protocol") or {}).get("name")
    if protocol is not None:
        get_protocol(protocol).check_test_ids(list(test.ids), where=f"{spec.describe()} (the record of {path})")
    return Run(path, record, method.eval(), test)


def score(run: Run, method: Method, indices: list[int], counts: tuple[int, ...], image_batch: int) -> dict[str, Any]:
    """Per-image metrics of `method` on the run's test slices `indices`, seeded as `ambiseg eval --seed`."""
    options = InferenceOptions(image_batch=image_batch)
    started = time.perf_counter()
    cpu = torch.device("cpu")
    result = evaluate_method(
        method, run.test, counts=counts, seed=run.seed, device=cpu, warmup=False, options=options, indices=indices
    )
    return {"per_image": result["per_image"], "seconds": time.perf_counter() - started}


def record_check(run: Run, per_image: dict[str, list[float]], indices: list[int]) -> dict[str, float]:
    """Largest |method - committed record| of each metric both hold, on the slices scored (NaN on
    both sides counts as equal, NaN on one side as infinitely far)."""
    out = {}
    for key in per_image.keys() & run.record["per_image"].keys():
        mine, stored = np.asarray(per_image[key]), np.asarray(run.record["per_image"][key])[indices]
        gap = np.where(np.isnan(mine) & np.isnan(stored), 0.0, np.abs(mine - stored))
        out[key] = float(np.nan_to_num(gap, nan=np.inf).max())
    return out


def draws_figure(run: Run, slices: Sequence[int], draws: int, total: int, out: Path) -> dict[str, Any]:
    """Rows: slices; columns: image, raters, then GTR draw k beside what the flow makes of it.

    The draws are the first `draws` of the `total` scored samples of each slice (same generator).
    Returns, per slice, whether the twin's samples equal the draws the flow started from.
    """
    twin = prior_only_twin(run.method)
    raters = run.test[0]["masks"].shape[0]
    cols = 1 + raters + 2 * draws
    height = 1.15 * len(slices) + 0.5
    fig = Figure(figsize=(1.05 * cols + 0.6, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(slices), cols, squeeze=False)
    same, shown = {}, None
    for row, i in enumerate(slices):
        item = run.test[i]
        image = item["image"][None]
        gens = [torch.Generator().manual_seed(run.seed * SEED_STRIDE + i)]
        pair = sample_with_sources(run.method, image, total, generator=gens)
        own = twin.sample(image, total, generator=[torch.Generator().manual_seed(run.seed * SEED_STRIDE + i)])
        same[str(i)] = bool(torch.equal(own, pair.sources))
        panels = [(item["image"][0], "gray", f"slice {i}")]
        panels += [(mask, "gray", f"rater {a + 1}") for a, mask in enumerate(item["masks"])]
        for k in range(draws):
            panels += [
                (pair.sources[0, k], "viridis", f"GTR draw {k + 1}"),
                (pair.outputs[0, k], "viridis", f"flow of draw {k + 1}"),
            ]
        for c, (values, cmap, title) in enumerate(panels):
            ax = axes[row, c]
            ax.set_xticks([])
            ax.set_yticks([])
            shown = ax.imshow(values.float().numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if cmap == "viridis":  # the mask each probability map is scored as
                ax.contour(values.float().numpy() >= 0.5, levels=[0.5], colors="white", linewidths=0.6)
            if row == 0 or c == 0:
                ax.set_title(title, fontsize=7, pad=2)
    top = 1 - 0.45 / height  # room for the title and one line of column titles
    fig.subplots_adjust(left=0.01, right=0.93, top=top, bottom=0.02, wspace=0.05, hspace=0.12)
    assert shown is not None, "no image was drawn"
    bar = fig.colorbar(shown, cax=fig.add_axes((0.945, 0.1, 0.012, top - 0.15)))
    bar.set_label("foreground probability", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(
        f"{run.method.name} seed {run.seed}: GTR draws (sigmoid of the logit draw) and what the flow makes of the same "
        f"draw; white: the 0.5 contour they are scored by",
        fontsize=8,
    )
    save_figure(fig, out, dpi=120)
    return {"checkpoint": str(run.path), "slices": slices, "twin_samples_equal_flow_sources": same}


def _cell(row: dict[str, float]) -> str:
    return f"{row['diff']:+.3f} [{row['lo']:+.3f}, {row['hi']:+.3f}]" if row["n"] else "n/a"


def _better(key: str) -> str:
    try:
        return metrics.better(key)
    except ConfigError:
        return "?"


def markdown(result: dict[str, Any]) -> str:
    """The tables: per method, each metric's difference method - twin per seed and pooled."""
    lines = [
        "# The flow's own effect: ATFM minus its own GTR (the prior-only twin)",
        "",
        f"Command (from the repository root): `{result['command']}`",
        "",
        f"{len(result['indices'])} of {result['test_images']} test slices "
        f"({'all' if result['every'] == 1 else 'every ' + str(result['every']) + 'th'}), "
        f"{', '.join(map(str, result['counts']))} samples; slice i of a seed-k run drawn with the generator "
        "seeded k * 100003 + i, as `ambiseg eval --seed k`. Each cell: mean of the per-image difference method - "
        "twin on the same slices and the same GTR draws, with its 95% bootstrap interval (pooled: images and "
        "seeds resampled); images where either side is NaN are left out (n). The twin samples sigmoid(GTR "
        "draw) at the prior's temperature: act-gtr with the run's own GTR weights.",
    ]
    for name, pooled in result["pooled"].items():
        runs = [r for r in result["checkpoints"] if r["method"] == name]
        seeds = [r["seed"] for r in runs]
        head = " | ".join(f"seed {s}" for s in seeds)
        lines += [
            "",
            f"## {name}",
            "",
            f"| metric | better | {head} | pooled | method (pooled) | twin (pooled) | n |",
            "|---" * (len(seeds) + 6) + "|",
        ]
        for key, row in pooled["difference"].items():
            cells = " | ".join(_cell(r["difference"][key]) for r in runs)
            lines.append(
                f"| {key} | {_better(key)} | {cells} | {_cell(row)} | {row['first']:.3f} | {row['second']:.3f} "
                f"| {row['n']} |"
            )
        worst = ", ".join(f"seed {r['seed']} {max(r['record_max_abs_diff'].values(), default=0.0):.2g}" for r in runs)
        lines += [
            "",
            f"The method's per-image values against its committed records, largest |difference| over the "
            f"{len(runs[0]['record_max_abs_diff'])} metrics both hold: {worst}.",
        ]
    seconds = sum(r["seconds"]["method"] + r["seconds"]["twin"] for r in result["checkpoints"])
    lines += ["", f"Wall time: {seconds / 60:.1f} min of scoring ({result['threads']} torch thread(s))."]
    for fig in result["figures"]:
        ok = all(fig["twin_samples_equal_flow_sources"].values())
        lines += [
            "",
            f"![{fig['file']}]({fig['file']})",
            "",
            f"{fig['file']}: {fig['checkpoint']}, test slices {', '.join(map(str, fig['slices']))}; the twin's "
            f"samples {'equal' if ok else 'do NOT equal'} the GTR draws the flow started from on every slice shown.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path, help="default: those of --methods in --folder's records")
    parser.add_argument("--folder", type=Path, default=FOLDER, help="the bench folder of the default checkpoints")
    parser.add_argument("--methods", default="atfm,atfm-nosf", help="the default checkpoints' methods")
    parser.add_argument("--root", default=None, help="the data root (default: the record's)")
    parser.add_argument("--every", type=int, default=1, help="take every Nth test slice (1: all)")
    parser.add_argument("--samples", default="16,32,100", help="sample counts, comma-separated")
    parser.add_argument("--figure-slices", default="40,3,10,26,27", help="test slices of the figure ('' for none)")
    parser.add_argument("--figure-draws", type=int, default=4, help="GTR draws per slice in the figure")
    parser.add_argument("--image-batch", type=int, default=8, help="test slices sampled together")
    parser.add_argument("--out", type=Path, default=FOLDER / "flow-effect")
    parser.add_argument(
        "--protocol", default=None, help="score a checkpoint that no bench record names on this protocol's slices"
    )
    args = parser.parse_args()
    counts = parse_counts(args.samples)
    if args.every < 1:
        raise SystemExit(f"--every must be >= 1, got {args.every}")
    if not 1 <= args.figure_draws <= max(counts):
        raise SystemExit(
            f"--figure-draws must be between 1 and {max(counts)} (the samples drawn), got {args.figure_draws}"
        )
    slices = parse_ints(args.figure_slices, "--figure-slices") if args.figure_slices else []
    methods = args.methods.split(",")
    paths = args.checkpoints or [
        Path(r["checkpoint"]) for r in newest_records(runs_of(args.folder)) if r["method"] in methods
    ]
    if not paths:
        raise SystemExit(f"no checkpoints: none given and no records of {args.methods} in {args.folder / 'results'}")
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    if "OMP_NUM_THREADS" in os.environ:
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    runs, entries, indices, n = [], [], [], 0
    for path in paths:
        run = load_run(path, args.root, args.protocol)
        n = len(run.test)
        bad = [i for i in slices if not 0 <= i < n]
        if bad:
            raise SystemExit(f"--figure-slices {bad[0]} is out of range: the test split has {n} slices")
        indices = list(range(0, n, args.every))
        print(f"{path}: {run.method.name} seed {run.seed}, {len(indices)} of {n} slices", flush=True)
        flow = score(run, run.method, indices, counts, args.image_batch)
        twin = score(run, prior_only_twin(run.method), indices, counts, args.image_batch)
        check = record_check(run, flow["per_image"], indices)
        print(
            f"  method {flow['seconds']:.0f} s, twin {twin['seconds']:.0f} s; largest |method - record| "
            f"{max(check.values(), default=float('nan')):.2g}",
            flush=True,
        )
        runs.append(run)
        entries.append(
            {
                "checkpoint": str(path),
                "method": run.method.name,
                "seed": run.seed,
                "record_created": run.record["created"],
                "config": run.method.config,
                "twin_config": prior_only_twin(run.method).config,
                "per_image": {"method": flow["per_image"], "twin": twin["per_image"]},
                "difference": paired_difference(flow["per_image"], twin["per_image"]),
                "record_max_abs_diff": check,
                "seconds": {"method": flow["seconds"], "twin": twin["seconds"]},
            }
        )
    pooled = {}
    for name in dict.fromkeys(e["method"] for e in entries):
        mine = sorted((e for e in entries if e["method"] == name), key=lambda e: e["seed"])
        sides = [
            {k: [e["per_image"][side][k] for e in mine] for k in mine[0]["per_image"][side]}
            for side in ("method", "twin")
        ]
        pooled[name] = {"seeds": [e["seed"] for e in mine], "difference": paired_difference(*sides)}
    figures = []
    for name in pooled if slices else ():
        run = min((r for r in runs if r.method.name == name), key=lambda r: r.seed)
        file = f"flow-effect-{name}.png"
        figures.append({"file": file, **draws_figure(run, slices, args.figure_draws, max(counts), args.out / file)})
    result = {
        "kind": "ambiseg-flow-effect",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "command": command,
        "counts": list(counts),
        "every": args.every,
        "test_images": n,
        "indices": indices,
        "threads": torch.get_num_threads(),
        "checkpoints": entries,
        "pooled": pooled,
        "figures": figures,
    }
    write_json(args.out / "flow-effect.json", result)  # NaN (a metric undefined on an image) as null
    write_text(args.out / "flow-effect.md", markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / 'flow-effect.json'}, {args.out / 'flow-effect.md'} and {len(figures)} figure(s)")


if __name__ == "__main__":
    try:
        main()
    except AmbisegError as err:  # one line, as the CLI prints it
        raise SystemExit(f"error: {err}") from None
