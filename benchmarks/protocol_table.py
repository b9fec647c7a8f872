"""The condensed table of a protocol's leaderboard for docs/leaderboard.md, from its records.

    python benchmarks/protocol_table.py benchmarks/results/lidc-v1

Columns: GED16, GED100 [95%], diversity, HM-IoU32 [95%], the paired difference to ATFM on
GED100 and HM-IoU32 [95%], GED16 untrained, trained minus untrained GED16 [95%] (records that
store per-image untrained values), train s, sample s per 100 samples, seeds. Reference rows last.
Below it: each method's GED100 and HM-IoU32 seed by seed (how far one training run moves a row),
and the track's CPU time, training and evaluation, summed over the records.

    python benchmarks/protocol_table.py benchmarks/results/lidc-v2 --plausibility

prints instead the lidc-v2 table of docs/leaderboard.md: the means of GED100, HM-IoU32,
Diversity100 and the plausibility metrics (Stray, MissedConsensus, SoftShare), the seeds and the
mean training time, best GED100 first, reference rows last.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ambiseg.cli.options import parse_ints
from ambiseg.leaderboard import build_rows, newest_records
from ambiseg.results import bootstrap_ci, by_seed, of_seeds, read_records


def _ci(m: dict[str, float] | None, signed: bool = False) -> str:
    if not m:
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(m['mean'])} [{f.format(m['lo'])}, {f.format(m['hi'])}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", default=None, help="only these training seeds, e.g. 0 or 0,1 (default: all)")
    parser.add_argument("--plausibility", action="store_true", help="the means and plausibility table (lidc-v2)")
    args = parser.parse_args()
    seeds = None if args.seeds is None else parse_ints(args.seeds, "--seeds")
    records = of_seeds(read_records([args.folder]), seeds)
    if args.plausibility:
        print(plausibility_table(records))
        return
    untrained: dict[str, list[np.ndarray]] = {}
    for rec in newest_runs(records):
        for key, values in rec.get("untrained_per_image", {}).items():
            untrained.setdefault(rec["method"], []).append(np.asarray(rec["per_image"][key]) - np.asarray(values))
    print(
        "| method | GED16 | GED100 [95%] | diversity | HM-IoU32 [95%] | GED100 vs atfm | HM-IoU32 vs atfm | "
        "GED16 untrained | trained - untrained GED16 | train s | sample s / 100 | seeds |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in build_rows(records):
        m = r.metrics
        gain = ""
        if r.method in untrained:
            diff = by_seed(untrained[r.method])  # [seeds, images]: images and seeds resampled
            lo, hi = bootstrap_ci(diff)
            gain = f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        timing = ("", "") if r.reference else (f"{r.train_s:.0f}", f"{r.sample_s:.2f}")
        print(
            f"| {r.method} | {m['GED16']['mean']:.3f} | {_ci(m.get('GED100'))} | {m['Diversity100']['mean']:.3f} | "
            f"{_ci(m.get('HM-IoU32'))} | {_ci(r.vs_anchor.get('GED100'), True)} | "
            f"{_ci(r.vs_anchor.get('HM-IoU32'), True)} | "
            f"{'' if r.reference else format(r.untrained.get('GED', float('nan')), '.3f')} | {gain} | "
            f"{timing[0]} | {timing[1]} | {','.join(map(str, r.seeds))} |"
        )
    print()
    print(per_seed_table(records))
    print()
    print(cpu_time(records))


PLAUSIBILITY_COLUMNS = ("GED100", "HM-IoU32", "Diversity100", "Stray", "MissedConsensus", "SoftShare")


def _seed_span(seeds: list[int]) -> str:
    """Seeds as "0-2" when consecutive, else "0,2"."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def plausibility_table(records: list[dict]) -> str:
    """Markdown: each row's means of PLAUSIBILITY_COLUMNS, its seeds and mean training time, models
    by GED100 (best first), then the reference rows; a metric a record lacks is "-"."""
    rows = build_rows(records)
    rows.sort(key=lambda r: (r.reference, r.metrics.get("GED100", {}).get("mean", float("inf"))))
    lines = [
        f"| method | seeds | {' | '.join(PLAUSIBILITY_COLUMNS)} | mean train s |",
        "|---" * (len(PLAUSIBILITY_COLUMNS) + 3) + "|",
    ]
    for r in rows:
        means = [r.metrics[c]["mean"] if c in r.metrics else None for c in PLAUSIBILITY_COLUMNS]
        cells = ["-" if v is None or np.isnan(v) else f"{v:.3f}" for v in means]
        seeds = "" if r.reference else _seed_span(r.seeds)
        train = "" if r.reference else f"{r.train_s:,.0f}"
        lines.append(f"| {r.method} | {seeds} | {' | '.join(cells)} | {train} |")
    return "\n".join(lines)


def newest_runs(records: list[dict]) -> list[dict]:
    """The newest record of each (method, seed), reference rows left out: the records the table uses."""
    return [r for r in newest_records(records) if not r.get("reference")]


def per_seed_table(records: list[dict], metrics: tuple[str, ...] = ("GED100", "HM-IoU32")) -> str:
    """Markdown: one row per method, each seed's mean of `metrics` ("GED100 / HM-IoU32") and the
    largest seed-to-seed move of the first metric."""
    values: dict[str, dict[int, list[float]]] = {}
    for rec in newest_runs(records):
        values.setdefault(rec["method"], {})[int(rec["seed"])] = [rec["metrics"][k]["mean"] for k in metrics]
    seeds = sorted({seed for per_seed in values.values() for seed in per_seed})
    lines = [
        f"| method | {' | '.join(f'seed {seed}' for seed in seeds)} | range of {metrics[0]} |",
        "|---" * (len(seeds) + 2) + "|",
    ]
    for method, per_seed in values.items():
        cells = [" / ".join(f"{v:.3f}" for v in per_seed[seed]) if seed in per_seed else "" for seed in seeds]
        first = [v[0] for v in per_seed.values()]
        lines.append(f"| {method} | {' | '.join(cells)} | {max(first) - min(first):.3f} |")
    return f"{' / '.join(metrics)} by training seed:\n\n" + "\n".join(lines)


def cpu_time(records: list[dict]) -> str:
    """The track's wall time summed over (method, seed) records: training, and evaluation where recorded."""
    runs = newest_runs(records)  # a re-evaluation repeats its run's train_s: count each run once
    train = sum(r["timing"]["train_s"] for r in runs)
    timed = [r for r in runs if "eval_s" in r["timing"]]
    evaluation = sum(r["timing"]["eval_s"] + r["timing"]["untrained_eval_s"] for r in timed)
    line = f"CPU time: training {train / 3600:.2f} h over {len(runs)} runs"
    line += f"; evaluation {evaluation / 3600:.2f} h over {len(timed)} of them"
    if len(timed) < len(runs):
        line += f" ({len(runs) - len(timed)} records predate the evaluation timing)"
    threads = sorted({r["env"]["threads"] for r in runs})
    return line + f" (torch threads per run: {', '.join(map(str, threads))})."


if __name__ == "__main__":
    main()
