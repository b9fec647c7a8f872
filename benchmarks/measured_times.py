"""Write `ambiseg/measured_times.json`, the wall times the bench header quotes, from bench records.

Run the bench on an otherwise idle machine from a clean checkout, then, e.g.:

    python benchmarks/measured_times.py /tmp/quiet/results --command "ambiseg bench --methods atfm,phiseg,probunet"

Each (dataset, preset, method) gets the mean of its records' `timing.total_s` (untrained
evaluation, training, evaluation: the whole per-method wall time) over seeds. The machine, the
thread count and the commit are read from the records and must agree across them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

from ambiseg.expectations import MEASURED_TIMES
from ambiseg.files import write_json
from ambiseg.results import read_records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", help="bench output folders or record files")
    parser.add_argument("--command", required=True, help="the bench command that produced the records")
    parser.add_argument("--out", type=Path, default=MEASURED_TIMES)
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="cores of the measuring machine")
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    envs = set()
    for rec in read_records(args.records):
        if rec.get("reference") or "total_s" not in rec["timing"]:
            continue
        times[f"{rec['dataset']}/{rec['preset']}"][rec["method"]].append(rec["timing"]["total_s"])
        env = rec["env"]
        envs.add((env.get("device_name"), env.get("threads"), env.get("commit")))
    if len(envs) != 1:
        raise SystemExit(f"the records come from {len(envs)} machines/thread counts/commits: {sorted(map(str, envs))}")
    ((machine, threads, commit),) = envs
    if str(commit).endswith("+dirty"):
        raise SystemExit(f"the records name a dirty checkout ({commit}); measure from a clean one")
    table = {
        "machine": f"{machine}, {args.cores} cores, otherwise idle",
        "threads": threads,
        "commit": commit,
        "command": args.command,
        "times": {
            key: {m: round(statistics.mean(v), 1) for m, v in sorted(rows.items())} for key, rows in times.items()
        },
    }
    write_json(args.out, table)
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
