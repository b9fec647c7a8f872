"""Write the test slices of a LIDC split into a small zip of the same layout, for a device check
that cannot carry the whole 135 MB zip (evaluate it there with `--split all`).

    python benchmarks/lidc_subset.py ../shared/data/lidc-idri-slices.zip runs/lidc-test500.zip

The slices are the ones `ambiseg bench --data lidc --preset cpu` scores (seed-0 patient split,
its test limit), so per-image results line up with the committed records. The output holds
data: keep it out of git (runs/ is ignored).
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from ambiseg.data.spec import DataSpec
from ambiseg.files import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="the LIDC slices zip")
    parser.add_argument("out", type=Path)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    dataset = DataSpec(name="lidc", root=args.root, preset=args.preset).build_splits()[args.split]
    wanted = set()
    for item_id in dataset.ids:
        patient, nodule, name = item_id.split("/")
        wanted.add((patient, nodule, name + ".png"))
    written = 0
    with zipfile.ZipFile(args.root) as src, atomic_path(args.out) as tmp, zipfile.ZipFile(tmp, "w") as dst:
        for entry in src.namelist():
            parts = entry.split("/")
            if len(parts) == 5 and (parts[1], parts[2], parts[4]) in wanted:
                dst.writestr(entry, src.read(entry))
                written += 1
    print(f"{len(wanted)} slices, {written} files -> {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
