"""Benchmark records: summary statistics, environment, and reading records back safely.

A per-image value may be NaN where a metric is undefined on an image (e.g. `MissedConsensus` where
a rater marks nothing). Records hold it as JSON `null` (`ambiseg.files.write_json`), `read_records`
gives it back as NaN, and every statistic here leaves such images out (`finite_values`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import re
import subprocess
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .errors import AmbisegError
from .files import is_temp_file

__all__ = [
    "bootstrap_ci",
    "finite_values",
    "by_seed",
    "of_seeds",
    "summarise",
    "make_record",
    "environment",
    "read_records",
    "check_record",
    "created_at",
    "load_json",
    "RECORD_KIND",
    "REFERENCE_KIND",
    "RECORD_SCHEMA",
]

RECORD_KIND = "ambiseg-bench-record"
REFERENCE_KIND = "ambiseg-reference-rows"  # one file holding the reference rows of a test set
RECORD_SCHEMA = 1  # records written before the schema field existed are read as schema 1

MAX_RECORD_BYTES = 256 * 2**20  # a record of 10,000 images and 30 metrics is about 10 MB
MAX_JSON_DEPTH = 64  # records nest about 8 deep (env.versions, config); the parser recurses per level

_NUMBER = (int, float)
# field (dotted) -> (allowed types, required); a dotted field is required only when its parent is
# there. The leaderboard reads exactly these (and the per-image lists, checked in `check_record`)
RECORD_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "dataset": ((str,), True),
    "preset": ((str,), True),
    "method": ((str,), True),
    "seed": ((int,), True),
    "created": ((str,), True),
    "per_image": ((dict,), True),
    "untrained": ((dict,), False),
    "untrained.GED": (_NUMBER, True),
    "untrained.samples": ((int,), True),
    "untrained_per_image": ((dict,), False),
    "metrics": ((dict,), False),
    "protocol": ((dict, type(None)), False),
    "protocol.name": ((str,), False),
    "timing": ((dict,), True),
    "timing.train_s": (_NUMBER, True),
    "timing.sample_s_per_image": (_NUMBER, True),
    "timing.samples_per_image": ((int,), True),
    "params": ((int,), True),
    "flops": ((dict,), False),
    "flops.per_image": ((*_NUMBER, type(None)), False),
    "flops.per_sample": ((*_NUMBER, type(None)), False),
    "memory": ((dict,), False),
    "memory.peak_mb": ((*_NUMBER, type(None)), False),
    "env": ((dict,), True),
    "env.device": ((str,), True),
    "env.device_name": ((str, type(None)), False),
    "env.threads": ((int,), False),  # torch's CPU threads in the run (ambiseg.threads); optional
}


def finite_values(values: np.ndarray | list[float]) -> np.ndarray:
    """`values` ([images], or [seeds, images]) without the images where a value is not finite (NaN:
    the metric is undefined there); in 2-D an image column goes for every seed, so the seeds keep
    sharing their images. `[1, images]` is returned as `[images]`."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        return arr[np.isfinite(arr)]
    if arr.ndim == 2:
        return arr[:, np.isfinite(arr).all(axis=0)]
    raise ValueError(f"expected [images] or [seeds, images] values, got shape {arr.shape}")


def bootstrap_ci(
    values: np.ndarray | list[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`.

    `values` holds one value per test image [images], or [seeds, images] when the same test images
    were scored by models trained with several seeds. Then images and seeds are both resampled
    (every seed takes the same draw of images, then seeds are drawn with replacement), so the
    interval covers both the test set and the training seed: three seeds of 500 images do not
    count as 1,500 independent images. Non-finite values are dropped (a whole image column in 2-D).
    """
    try:
        arr = finite_values(values)
    except ValueError as exc:
        raise ValueError(f"bootstrap_ci: {exc}") from None
    n = arr.shape[-1]
    if n == 0:
        return float("nan"), float("nan")
    if arr.ndim == 1 and n == 1:
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    images = rng.integers(0, n, size=(resamples, n))
    if arr.ndim == 1:
        means = arr[images].mean(axis=1)
    else:
        per_seed = arr[:, images].mean(axis=2)  # [seeds, resamples]: each seed's mean on each image draw
        seeds = rng.integers(0, arr.shape[0], size=(resamples, arr.shape[0]))
        means = per_seed[seeds, np.arange(resamples)[:, None]].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def by_seed(per_seed: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
    """Per-image values of several seeds as [seeds, images] when every seed scored the same number
    of images (one test set), else pooled into one [values] row (records of different test sets)."""
    if len({len(v) for v in per_seed}) == 1:
        return np.asarray(per_seed, dtype=np.float64)
    return np.concatenate([np.asarray(v, dtype=np.float64) for v in per_seed])


def of_seeds(records: list[dict[str, Any]], seeds: Collection[int] | None) -> list[dict[str, Any]]:
    """The records of the training seeds in `seeds` (None: all); reference rows, which hold for
    every seed, are always kept."""
    if seeds is None:
        return records
    return [r for r in records if r.get("reference") or int(r["seed"]) in seeds]


def summarise(per_image: dict[str, list[float]] | dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """`{metric: {mean, lo, hi, n}}` from per-image values ([images], or [seeds, images]: see
    `bootstrap_ci`); images with a non-finite value are left out (`finite_values`), n counts the
    values kept, and a metric undefined on every image has mean, lo and hi NaN and n 0."""
    out = {}
    for key, values in per_image.items():
        kept = finite_values(values)
        lo, hi = bootstrap_ci(kept)
        out[key] = {
            "mean": float(kept.mean()) if kept.size else float("nan"),
            "lo": lo,
            "hi": hi,
            "n": int(kept.size),
        }
    return out


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def environment(device: torch.device) -> dict[str, Any]:
    """Library versions, device description and the ambiseg commit, for a record."""
    import numpy
    import scipy

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "versions": {
            "ambiseg": __version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            "python": platform.python_version(),
        },
        "commit": _git_commit(),
        "platform": platform.platform(),
    }


def make_record(
    *,
    method: str,
    dataset: str,
    preset: str,
    seed: int,
    counts: Sequence[int],
    per_image: dict[str, list[float]],
    timing: dict[str, Any],
    params: int,
    env: dict[str, Any],
    reference: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """One record in the schema the leaderboard reads: the fields every record has, the summary of
    `per_image` (mean and interval per metric) and the writer's own `fields` (config, data,
    protocol, ...). Checked by `check_record` before it is returned, so a writer cannot produce a
    record that `read_records` would refuse. The bench, the reference rows and `ambiseg eval`
    write their records through it."""
    record: dict[str, Any] = {
        "kind": RECORD_KIND,
        "schema": RECORD_SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "method": method,
        "dataset": dataset,
        "preset": preset,
        "seed": seed,
        "counts": list(counts),
        **({"reference": True} if reference else {}),
        **fields,
        "metrics": summarise(per_image),
        "per_image": per_image,
        "timing": timing,
        "params": params,
        "env": env,
    }
    check_record(record, f"the {method} record being written")
    return record


def _bad(file: Path | str, field: str, why: str) -> AmbisegError:
    """The one-line error for a malformed `field` of the record in `file`."""
    return AmbisegError(
        f"{file}: malformed bench record: field '{field}' {why}; re-run `ambiseg bench` or fix the file"
    )


def check_record(record: dict[str, Any], file: Path | str) -> None:
    """Refuse a bench record of another schema or with a missing, mistyped or inconsistent field
    the leaderboard reads, naming `file` and the field."""
    schema = record.get("schema", 1)
    if type(schema) is not int or not 1 <= schema <= RECORD_SCHEMA:
        raise _bad(
            file, "schema", f"is {_show(schema)}; this ambiseg reads schema 1..{RECORD_SCHEMA} (upgrade ambiseg)"
        )
    for name, (types, required) in RECORD_FIELDS.items():
        _check_field(record, name, types, required, file)
    created_at(record, file)
    images = _check_lists(record, "per_image", file, None)
    _check_lists(record, "untrained_per_image", file, images)
    if "untrained" in record:
        if record["untrained"]["samples"] < 1:
            raise _bad(file, "untrained.samples", f"is {record['untrained']['samples']}, not a positive count")
        for key, value in record["untrained"].items():
            if not _is_number(value):
                raise _bad(file, f"untrained.{key}", "is not a finite number")


def _check_field(record: dict[str, Any], name: str, types: tuple[type, ...], required: bool, file: Path | str) -> None:
    """Refuse field `name` (dotted) of `record` when it is missing but `required`, or mistyped."""
    parent, _, key = name.rpartition(".")
    holder = record.get(parent) if parent else record
    if not isinstance(holder, dict):  # the parent is optional and absent (or null)
        return
    if key not in holder:
        if required:
            raise _bad(file, name, "is missing")
        return
    value = holder[key]
    if isinstance(value, bool) or not isinstance(value, types):
        allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise _bad(file, name, f"is {_show(value)}, not {allowed}")
    if isinstance(value, _NUMBER) and not (_is_number(value) and value >= 0):  # seeds, counts, sizes, times
        raise _bad(file, name, f"is {_show(value)}, not a finite number >= 0 of float range")


def _check_lists(record: dict[str, Any], group: str, file: Path | str, images: int | None) -> int | None:
    """Check that `record[group]` maps metric names to lists of numbers (null where undefined; NaN
    in a record not yet written), all of one length (`images`, when given); return that length
    (None when the group is empty)."""
    for key, value in record.get(group, {}).items():
        if not isinstance(value, list) or not value:
            raise _bad(file, f"{group}.{key}", "is not a non-empty list of numbers (null where undefined)")
        if any(v is not None and not _is_number(v) and not _is_nan(v) for v in value):
            raise _bad(file, f"{group}.{key}", "holds a value that is not a number")
        if images is not None and len(value) != images:
            raise _bad(file, f"{group}.{key}", f"holds {len(value)} values, not {images} (one per test image)")
        images = len(value)
    return images


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _is_number(value: Any) -> bool:
    """Whether `value` is an int or float (not bool) that a float holds finitely."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _show(value: Any) -> str:
    """`value` as JSON, cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        text = repr(type(value))
    return text if len(text) <= 40 else text[:37] + "..."


def created_at(record: dict[str, Any], file: Path | str | None = None) -> dt.datetime:
    """When `record` was written: its `created` ISO date-time, timezone-aware (naive: UTC), so that
    records written in different zones compare by the instant."""
    where = file if file is not None else record.get("_file", "record")
    text = record.get("created")
    try:
        when = dt.datetime.fromisoformat(text)  # type: ignore[arg-type]
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.astimezone(dt.timezone.utc)
    except (TypeError, ValueError, OverflowError):
        raise _bad(where, "created", f"is {_show(text)}, not an ISO date-time") from None


# a JSON string (with escapes), or one bracket: what the depth scan of `load_json` looks at
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def load_json(file: Path, *, what: str = "results file") -> Any:
    """The JSON value in `file`, read as UTF-8, refused in one line when it is over
    `MAX_RECORD_BYTES`, nested over `MAX_JSON_DEPTH` deep, not JSON, or holds NaN or infinity."""
    size = file.stat().st_size
    if size > MAX_RECORD_BYTES:
        raise AmbisegError(f"{file} is {size / 2**20:.0f} MB, over {MAX_RECORD_BYTES // 2**20} MB; not a {what}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AmbisegError(f"{file} is not a {what} (not UTF-8 JSON: {exc.reason})") from None
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise AmbisegError(f"{file} is not a {what}: JSON nested {deepest} deep (at most {MAX_JSON_DEPTH})")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise AmbisegError(f"{file} is not a {what} (not JSON: {exc})") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (write null where a value is undefined)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond the range of a float")
    return value


def _nan_for_null(record: dict[str, Any]) -> None:
    """Undefined values, written as null (`ambiseg.files.write_json`), as NaN again: per-image lists
    and the summaries in `metrics`."""
    nan = float("nan")
    for group in ("per_image", "untrained_per_image"):
        for key, values in record.get(group, {}).items():
            record[group][key] = [nan if v is None else v for v in values]
    for summary in record.get("metrics", {}).values():
        if isinstance(summary, dict):
            summary.update({k: nan for k, v in summary.items() if v is None})


def read_records(paths: Sequence[str | Path], *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """Every bench record in `paths` (files or directories, searched recursively), reference
    rows included (their files hold several records, each marked `reference`).

    A file that is not a bench record, or a record of another schema or with a malformed field,
    is refused with its name: a leaderboard never mixes in unrelated JSON by accident. Temporary
    files a killed writer left behind (`.<name>.<random>.tmp.json`) are skipped.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = (p for p in path.rglob("*.json") if p.parent.name == "results" and not is_temp_file(p))
            files += sorted(p for p in found if p.is_file())  # never a FIFO, which would block the read
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise AmbisegError(
                f"{path} is not a regular file or directory; give bench output directories or record files"
            )
        else:
            raise AmbisegError(f"{path} does not exist; give bench output directories or record files")
    records = []
    for file in files:
        record = load_json(file)
        if (
            isinstance(record, dict)
            and record.get("kind") == REFERENCE_KIND
            and isinstance(record.get("records"), list)
        ):
            inner = record["records"]
        elif isinstance(record, dict) and record.get("kind") == RECORD_KIND:
            inner = [record]
        else:
            raise AmbisegError(
                f'{file} is not a results file (no "kind": "{RECORD_KIND}"); '
                "pass the output directory of `ambiseg bench` or its results/*.json"
            )
        for one in inner:
            if not isinstance(one, dict):
                raise AmbisegError(f"{file}: a reference row is not a JSON object")
            check_record(one, file)
            _nan_for_null(one)
            one["_file"] = str(file)
            records.append(one)
    if not records and not allow_empty:
        raise AmbisegError(
            f"no bench records found in {', '.join(map(str, paths))}; run `ambiseg bench --out DIR` first"
        )
    return records
