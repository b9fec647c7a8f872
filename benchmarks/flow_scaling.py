"""The flow-study table: flow minus its own GTR against flow width, training steps and Euler steps.

Reads the folders `benchmarks/flow_study.py` wrote (history.csv, euler-steps.csv, config.json)
and prints one Markdown row per (run, validation step) and per (run, Euler steps):

    python benchmarks/flow_scaling.py benchmarks/results/lidc-v2-study/flow/*
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

KEYS = ("GED16", "HM-IoU16", "Diversity16", "Stray", "MissedConsensus", "SoftShare")


def cell(row: dict[str, str], key: str) -> str:
    """`diff [lo, hi]` when the run recorded the paired interval, else the two means."""
    if row.get(f"diff_{key}"):
        return f"{float(row[f'diff_{key}']):+.3f} [{float(row[f'lo_{key}']):+.3f}, {float(row[f'hi_{key}']):+.3f}]"
    if row.get(f"flow_{key}") and row.get(f"gtr_{key}"):
        return f"{float(row[f'flow_{key}']) - float(row[f'gtr_{key}']):+.3f} (means)"
    return ""


def describe(folder: Path) -> str:
    """Width, coupling, guide, truncation t0, schedule and Euler steps of the run's flow."""
    saved = json.loads((folder / "config.json").read_text())
    transport, sampler, args = saved["config"]["transport"], saved["config"]["sampler"], saved["args"]
    extra = [transport.get("coupling", "independent")] + (["guide"] if transport.get("guide") else [])
    path = transport.get("path")
    if isinstance(path, dict) and path.get("truncation"):
        extra.append(f"t0 {path['truncation']}")  # starts from the GTR draw noised to t0
    if args.get("schedule", "constant") != "constant":
        extra.append(f"{args['schedule']} lr")
    if args.get("ema"):
        extra.append(f"EMA {args['ema']}")
    return f"width {transport['width']}, {', '.join(extra)}, Euler {sampler['steps']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | flow | training steps | Euler steps | " + " | ".join(f"{k} flow - GTR" for k in KEYS) + " |")
    print("|---" * (4 + len(KEYS)) + "|")
    for folder in args.folders:
        flow = describe(folder)
        with open(folder / "history.csv") as fh:
            history = list(csv.DictReader(fh))
        euler = flow.rsplit(" ", 1)[-1]
        kept = json.loads((folder / "config.json").read_text())["args"].get("keep_flow")
        for row in history[1:] or history:
            steps = "the checkpoint's" if kept and row["step"] == "0" else row["step"]
            cells = " | ".join(cell(row, k) for k in KEYS)
            print(f"| {folder.name} | {flow} | {steps} | {euler} | {cells} |")
        sweep = folder / "euler-steps.csv"
        if sweep.exists():
            with open(sweep) as fh:
                for row in csv.DictReader(fh):
                    steps = "the checkpoint's" if kept and history[-1]["step"] == "0" else history[-1]["step"]
                    cells = " | ".join(cell(row, k) for k in KEYS)
                    print(f"| {folder.name} | {flow} | {steps} | {row['euler_steps']} | {cells} |")


if __name__ == "__main__":
    main()
