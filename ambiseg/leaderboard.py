"""Merge bench records into a leaderboard: Markdown, CSV, LaTeX and a GED-vs-time figure.

Records are grouped by (protocol, dataset, preset, method); per seed the newest record counts,
and the per-image values of all seeds give the mean and its 95% bootstrap interval, resampling
test images and seeds (`ambiseg.results.bootstrap_ci`).
Records of different protocols (or none) never share a table. Each row also carries its paired
per-image difference to ATFM (`vs atfm`, seeds matched) with a bootstrap interval, so "better" is
a claim with a number; an image where either side is NaN (a metric undefined there) is left out
of it, as it is of every mean and interval. Reference rows (majority vote, union, empty, raters;
`ambiseg.reference`) sit below the methods. Record files are never deleted or rewritten, so merging
never drops earlier results.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .files import atomic_paths, check_target, reading, suffix_kind
from .metrics.suite import PLAUSIBILITY
from .protocols import over_budget
from .registry import canonical_method
from .results import bootstrap_ci, by_seed, created_at, finite_values, read_records, summarise

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Row",
    "build_rows",
    "newest_records",
    "to_rich",
    "to_markdown",
    "to_csv",
    "to_latex",
    "plot",
    "figure",
    "write_leaderboard",
    "leaderboard_paths",
    "HEADLINE",
]

# headline families of the Markdown/LaTeX/console tables, in order; the CSV has every metric.
# Families in LARGEST_ONLY show only their largest sample count. The plausibility families (Stray,
# MissedConsensus, SoftShare) have no count; records written before them show an empty cell.
HEADLINE = ("GED", "Diversity", "HM-IoU", "MDM", "CI", "NCC", "TrueGED", "ModeTV", *PLAUSIBILITY)
LARGEST_ONLY = ("Diversity", "TrueGED", "ModeTV")
ANCHOR = "atfm"  # every row's paired difference is taken against this method


@dataclass
class Row:
    dataset: str
    preset: str
    method: str
    seeds: list[int]
    metrics: dict[str, dict[str, float]]
    untrained: dict[str, float]
    train_s: float
    sample_s: float
    samples_timed: int
    params: int
    flops_per_image: float | None
    flops_per_sample: float | None
    peak_mb: float | None
    device: str
    protocol: str | None = None
    reference: bool = False
    over_budget: bool = False  # a seed trained longer than its protocol's budget
    vs_anchor: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> mean, lo, hi
    per_seed: dict[int, dict[str, list[float]]] = field(default_factory=dict, repr=False)


def _paired(row: Row, anchor: Row, key: str) -> dict[str, float] | None:
    """Mean and 95% bootstrap interval of row minus anchor on `key`, image by image on the seeds
    both have (a reference row, which has no seeds of its own, against every anchor seed); images
    where either side is NaN are left out, and None when no image is left."""
    seeds = sorted(anchor.per_seed) if row.reference else sorted(set(row.per_seed) & set(anchor.per_seed))
    diffs = []
    for seed in seeds:
        mine = row.per_seed[row.seeds[0] if row.reference else seed].get(key)
        theirs = anchor.per_seed[seed].get(key)
        if mine is None or theirs is None or len(mine) != len(theirs):
            return None
        diffs.append(np.asarray(mine) - np.asarray(theirs))
    if not diffs or len({d.size for d in diffs}) != 1:
        return None
    diff = finite_values(np.stack(diffs))  # [seeds, images]: images and seeds resampled
    if diff.size == 0:
        return None
    lo, hi = bootstrap_ci(diff)
    return {"mean": float(diff.mean()), "lo": lo, "hi": hi}


def _run_key(rec: dict[str, Any]) -> tuple[str, str, str, str, int]:
    """(protocol, dataset, preset, today's method name, seed): one (method, seed) of one table."""
    protocol = (rec.get("protocol") or {}).get("name") or ""
    return protocol, rec["dataset"], rec["preset"], canonical_method(rec["method"]), int(rec["seed"])


def newest_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each (protocol, dataset, preset, method, seed), in that order: the
    records a table counts (a re-evaluation replaces the older record; a record under a former
    method name counts as today's and is returned under today's name, so callers keying by
    `method` see one method, not two)."""
    newest: dict[tuple[str, str, str, str, int], dict[str, Any]] = {}
    for rec in records:
        key = _run_key(rec)
        if key not in newest or created_at(rec) > created_at(newest[key]):
            newest[key] = {**rec, "method": key[3]}
    return [newest[key] for key in sorted(newest)]


def build_rows(records: list[dict[str, Any]]) -> list[Row]:
    """One row per (protocol, dataset, preset, method): newest record per seed, per-image values pooled."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in newest_records(records):
        protocol, dataset, preset, method, _ = _run_key(rec)
        groups[(protocol, dataset, preset, method)].append(rec)
    rows = []
    for (protocol, dataset, preset, method), recs in groups.items():
        per_seed: dict[str, list[list[float]]] = defaultdict(list)
        untrained: dict[str, list[float]] = defaultdict(list)
        for rec in recs:
            for k, v in rec["per_image"].items():
                per_seed[k].append(v)
            for k, v in rec.get("untrained", {}).items():
                untrained[k].append(v)
        rows.append(
            Row(
                dataset=dataset,
                preset=preset,
                method=method,
                seeds=[int(r["seed"]) for r in recs],
                metrics=summarise({k: by_seed(v) for k, v in per_seed.items()}),
                untrained={k: statistics.fmean(v) for k, v in untrained.items()},
                train_s=statistics.fmean([r["timing"]["train_s"] for r in recs]),
                sample_s=statistics.fmean([r["timing"]["sample_s_per_image"] for r in recs]),
                samples_timed=int(recs[0]["timing"]["samples_per_image"]),
                params=int(recs[0]["params"]),
                flops_per_image=recs[0].get("flops", {}).get("per_image"),
                flops_per_sample=recs[0].get("flops", {}).get("per_sample"),
                peak_mb=max((r.get("memory", {}).get("peak_mb") or 0.0) for r in recs) or None,
                device=recs[0]["env"]["device_name"] or recs[0]["env"]["device"],
                protocol=protocol or None,
                reference=bool(recs[0].get("reference")),
                over_budget=any(over_budget(r.get("protocol"), r["timing"]["train_s"]) for r in recs),
                per_seed={int(r["seed"]): r["per_image"] for r in recs},
            )
        )
    for section in _sections(rows).values():
        anchor = next((r for r in section if r.method == ANCHOR), None)
        for r in section:
            if anchor is None or r is anchor:
                continue
            for metric in (_headline(r), "HM-IoU32"):
                paired = _paired(r, anchor, metric) if metric is not None else None
                if metric is not None and paired is not None:
                    r.vs_anchor[metric] = paired
    rows.sort(key=lambda r: (r.protocol or "", r.dataset, r.preset, r.reference, _sort_value(r), r.method))
    return rows


def _headline(row: Row) -> str | None:
    """The GED key with the most samples (the leaderboard's sort key)."""
    geds = sorted((k for k in row.metrics if _split_key(k)[0] == "GED"), key=_split_key)
    return geds[-1] if geds else None


def _sort_value(row: Row) -> float:
    key = _headline(row)
    return row.metrics[key]["mean"] if key else math.inf


def _split_key(key: str) -> tuple[str, int]:
    match = re.fullmatch(r"(.*?)(\d+)", key)
    return (match.group(1), int(match.group(2))) if match else (key, 0)


def _columns(rows: list[Row], *, every: bool = False) -> list[str]:
    """Metric columns present in `rows`: the headline ones in order (`every`: all of them)."""
    present = sorted({k for r in rows for k in r.metrics}, key=_split_key)
    head = []
    for family in HEADLINE:
        keys = [k for k in present if _split_key(k)[0] == family]
        head += keys[-1:] if family in LARGEST_ONLY else keys
    return head + [k for k in present if k not in head] if every else head


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    cols = _columns(rows)
    counts = {int(r.untrained["samples"]) for r in rows if "GED" in r.untrained}
    untrained = bool(counts)
    header = ["method", *cols]
    if untrained:
        header.append(f"GED{'/'.join(map(str, sorted(counts)))} untrained")
    paired = sorted({k for r in rows for k in r.vs_anchor}, key=_split_key)
    header += [f"{k} vs {ANCHOR}" for k in paired]
    header += [
        "train s",
        f"sample s / {rows[0].samples_timed}" if rows else "sample s",
        "params",
        "FLOPs/image",
        "FLOPs/sample",
        "peak MB",
        "seeds",
    ]
    body = []
    for r in rows:
        line = [r.method]
        for c in cols:
            m = r.metrics.get(c)
            line.append(
                f"{_fmt(m['mean'])} [{_fmt(m['lo'])}, {_fmt(m['hi'])}]" if m and not math.isnan(m["mean"]) else "-"
            )
        if untrained:
            line.append(_fmt(r.untrained.get("GED")))
        for k in paired:
            d = r.vs_anchor.get(k)
            line.append(f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else "-")
        if r.reference:  # computed from the annotations: nothing trained, sampled or timed
            line += ["-"] * 6 + [",".join(map(str, r.seeds))]
        else:
            line += [
                f"{r.train_s:.1f}" + (" (over budget)" if r.over_budget else ""),
                f"{r.sample_s:.3f}",
                _human(r.params),
                _human(r.flops_per_image),
                _human(r.flops_per_sample),
                _fmt(r.peak_mb, 0),
                ",".join(map(str, r.seeds)),
            ]
        body.append(line)
    return header, body


def _sections(rows: list[Row]) -> dict[tuple[str, str, str], list[Row]]:
    """Rows by (protocol, dataset, preset): one table each, never mixed."""
    out: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        out[(r.protocol or "", r.dataset, r.preset)].append(r)
    return out


# ---- names from records are text, never markup: escaped for each output format ----------------
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LATEX = {
    "\\": r"\textbackslash{}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "|": r"\textbar{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    **{c: "\\" + c for c in "&%$#_{}"},
}


def _plain(text: str) -> str:
    """`text` on one line: control characters (newlines, tabs, escapes) as spaces."""
    return _CONTROL.sub(" ", str(text))


def _md(text: str) -> str:
    """`text` as literal Markdown: one line, punctuation that could format or split a table cell escaped."""
    return re.sub(r"([\\`*_\[\]<>|&#~$])", r"\\\1", _plain(text))


def _tex(text: str) -> str:
    """`text` as literal LaTeX text: one line, the special characters spelled as commands."""
    return "".join(_LATEX.get(c, c) for c in _plain(text))


def _mpl(text: str) -> str:
    """`text` as a literal matplotlib label of at most 60 characters: `$` would start mathtext, a
    leading `_` hides a legend entry."""
    text = _plain(text)
    text = (text[:59] + "…" if len(text) > 60 else text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _title(protocol: str, dataset: str, preset: str) -> str:
    return f"{'protocol ' + protocol + ' / ' if protocol else ''}{dataset} / preset {preset}"


# printed under a table of this preset: its runs test the plumbing, not the methods
PRESET_CAVEATS = {
    "smoke": "preset smoke: a few training steps of tiny networks to check that everything runs; "
    "these numbers say nothing about the methods (use --preset cpu or paper)",
}


CONSOLE_DROP = ("HM-IoU16", "CI32", "NCC32", "params", "FLOPs/image", "FLOPs/sample", "peak MB", "seeds")


def to_rich(rows: list[Row]) -> list[Any]:
    """Console tables (rich), one per (dataset, preset): means only, the widest columns left out."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for (protocol, dataset, preset), group in _sections(rows).items():
        header, body = _table(group)
        keep = [i for i, name in enumerate(header) if name not in CONSOLE_DROP]
        table = Table(
            title=escape(_plain(f"{_title(protocol, dataset, preset)} / {group[0].device}")),
            caption=escape(PRESET_CAVEATS[preset]) if preset in PRESET_CAVEATS else None,
        )
        for i in keep:
            table.add_column(escape(_plain(header[i])), justify="left" if i == 0 else "right")
        for line in body:  # the method's name whole; of a number, the mean without its interval
            table.add_row(*[escape(_plain(line[i] if i == 0 else line[i].split(" [")[0])) for i in keep])
        tables.append(table)
    return tables


def to_markdown(rows: list[Row]) -> str:
    parts = []
    plausibility = False  # whether a table shows Stray/MissedConsensus/SoftShare (then the footer says what they are)
    for (protocol, dataset, preset), group in _sections(rows).items():
        header, body = _table(group)
        plausibility |= any(h.split(" ")[0] in PLAUSIBILITY for h in header)
        parts.append(f"### {_md(_title(protocol, dataset, preset))} — {_md(group[0].device)}\n")
        parts.append("| " + " | ".join(map(_md, header)) + " |")
        parts.append("|" + "---|" * len(header))
        parts += ["| " + " | ".join([_md(line[0]), *line[1:]]) + " |" for line in body]
        if preset in PRESET_CAVEATS:
            parts.append(f"\n**{_md(PRESET_CAVEATS[preset])}**")
        parts.append("")
    plausible = (
        "Stray, MissedConsensus, SoftShare: the plausibility of single samples over all S (lower is "
        "better; images where one is undefined are left out; '-': not in the record). "
    )
    parts.append(
        "Metrics: mean over test images [95% bootstrap interval]; lower GED is better, higher HM-IoU/MDM "
        "is better. Diversity = E d(S, S'). " + (plausible if plausibility else "") + "sample s = seconds "
        "to draw the samples of one image (warm). "
        f"'vs {ANCHOR}': the row minus {ANCHOR}, image by image on shared seeds [95% bootstrap interval]; "
        "ref: rows are computed from the annotations alone."
    )
    return "\n".join(parts) + "\n"


def _cell(value: float | None) -> float | str:
    """A CSV cell: the number, or empty where there is none (missing or NaN)."""
    return "" if value is None or math.isnan(value) else value


def to_csv(rows: list[Row]) -> str:
    cols = _columns(rows, every=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    paired = sorted({k for r in rows for k in r.vs_anchor}, key=_split_key)
    writer.writerow(
        [
            "protocol",
            "dataset",
            "preset",
            "method",
            "reference",
            "seeds",
            *[f"{c}{s}" for c in cols for s in ("", "_lo", "_hi")],
            *[f"{k}_vs_{ANCHOR}{s}" for k in paired for s in ("", "_lo", "_hi")],
            "untrained_GED",
            "untrained_samples",
            "train_s",
            "sample_s_per_image",
            "samples_per_image",
            "params",
            "flops_per_image",
            "flops_per_sample",
            "peak_mb",
            "device",
        ]
    )
    for r in rows:
        values = []
        for c in cols:
            m = r.metrics.get(c, {})
            values += [_cell(m.get(field)) for field in ("mean", "lo", "hi")]
        for k in paired:
            d = r.vs_anchor.get(k, {})
            values += [d.get("mean", ""), d.get("lo", ""), d.get("hi", "")]
        unt = r.untrained.get("GED", "")
        writer.writerow(
            [
                r.protocol or "",
                r.dataset,
                r.preset,
                r.method,
                int(r.reference),
                " ".join(map(str, r.seeds)),
                *values,
                unt,
                r.untrained.get("samples", ""),
                r.train_s,
                r.sample_s,
                r.samples_timed,
                r.params,
                _cell(r.flops_per_image),
                _cell(r.flops_per_sample),
                _cell(r.peak_mb),
                r.device,
            ]
        )
    return buf.getvalue()


def to_latex(rows: list[Row]) -> str:
    """booktabs tables, one per section: metric means, the headline GED's 95% interval and paired
    difference to ATFM, sampling time and seeds; reference rows below a rule, untimed."""
    parts = []
    for (protocol, dataset, preset), group in _sections(rows).items():
        cols = [c for c in _columns(group) if not c.startswith(("TrueGED", "ModeTV"))]
        head = _headline(group[0])
        paired = head is not None and any(head in r.vs_anchor for r in group)
        name = _tex(head or "")
        extra = ([f"{name} 95\\% CI"] if head else []) + ([f"$\\Delta${name} vs {ANCHOR}"] if paired else [])
        seeds = sorted({s for r in group if not r.reference for s in r.seeds})
        parts.append(f"% {_plain(_title(protocol, dataset, preset))}; seeds {','.join(map(str, seeds))}")
        parts.append(
            f"% means over test images and seeds; intervals: 95% bootstrap over images and seeds; time: seconds "
            f"for {group[0].samples_timed} samples of one image"
        )
        parts.append("\\begin{tabular}{l" + "c" * (len(cols) + len(extra) + 1) + "}")
        parts.append("\\toprule")
        parts.append("Method & " + " & ".join([*map(_tex, cols), *extra]) + " & Time (s) \\\\")
        parts.append("\\midrule")
        for i, r in enumerate(group):
            if r.reference and (i == 0 or not group[i - 1].reference):
                parts.append("\\midrule")
            cells = [_fmt(r.metrics[c]["mean"]) if c in r.metrics else "-" for c in cols]
            if head:
                m = r.metrics.get(head)
                cells.append(f"[{_fmt(m['lo'])}, {_fmt(m['hi'])}]" if m else "-")
            if paired:
                d = r.vs_anchor.get(head or "")
                cells.append(f"${d['mean']:+.3f}$ $[{d['lo']:+.3f}, {d['hi']:+.3f}]$" if d else "-")  # math: real minus
            cells.append("-" if r.reference else f"{r.sample_s:.2f}")
            parts.append(f"{_tex(r.method)} & " + " & ".join(cells) + " \\\\")
        parts.append("\\bottomrule")
        parts.append("\\end{tabular}\n")
    return "\n".join(parts)


def _styles(rows: list[Row]) -> dict[str, tuple[str, str]]:
    """One (colour, marker) per method, the same in every panel: the names in sorted order take
    matplotlib's ten cycle colours, and past them the next marker."""
    names = sorted({r.method for r in rows if not r.reference})
    return {name: (f"C{i % 10}", "osD^v"[i // 10 % 5]) for i, name in enumerate(names)}


def figure(rows: list[Row]) -> Figure:
    """GED (headline count) against sampling time per image, one point per method and one panel
    per (protocol, dataset, preset); a method has the same colour and marker in every panel."""
    from matplotlib.figure import Figure

    sections = _sections(rows)
    styles = _styles(rows)
    fig = Figure(figsize=(5.5 * len(sections), 4.2))
    axes = fig.subplots(1, len(sections), squeeze=False)
    for ax, ((protocol, dataset, preset), group) in zip(axes[0], sections.items(), strict=True):
        key = _headline(group[0]) or "GED"
        methods = 0
        for r in group:
            if r.reference and key in r.metrics:  # no time: a horizontal line for scale
                ax.axhline(r.metrics[key]["mean"], color="grey", lw=0.8, ls=":")
                ax.annotate(
                    _mpl(r.method), (0.01, r.metrics[key]["mean"]), xycoords=("axes fraction", "data"), fontsize=7
                )
            elif key in r.metrics:
                m = r.metrics[key]
                yerr = [[m["mean"] - m["lo"]], [m["hi"] - m["mean"]]]
                colour, marker = styles[r.method]
                ax.errorbar(r.sample_s, m["mean"], yerr=yerr, fmt=marker, color=colour, capsize=3, label=_mpl(r.method))
                methods += 1
        if methods:
            ax.legend(fontsize=7, loc="upper right", title="95% intervals", title_fontsize=7)  # close points legible
        if all(r.sample_s > 0 for r in group if not r.reference and key in r.metrics):
            ax.set_xscale("log")  # a time of 0 has no place on it
        ax.set_xlabel(f"seconds for {group[0].samples_timed} samples of one image")
        ax.set_ylabel(_mpl(f"{key} (lower is better)"))
        ax.set_title(_mpl(_title(protocol, dataset, preset)))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot(rows: list[Row], path: str | Path) -> None:
    """Write `figure(rows)` to `path`."""
    from .data.figures import save_figure

    save_figure(figure(rows), path, dpi=120)


def leaderboard_paths(out: str | Path) -> dict[str, Path]:
    """The files of the leaderboard set in `out` by suffix, each checked as an output
    (`ambiseg.files.check_target`): a caller checks them before any work."""
    paths = {ext: Path(out) / f"leaderboard.{ext}" for ext in ("md", "csv", "tex", "png")}
    for path in paths.values():
        check_target(path, kind=suffix_kind(path))
    return paths


def write_leaderboard(
    inputs: list[str | Path], out: str | Path, *, records: list[dict[str, Any]] | None = None
) -> tuple[list[Row], dict[str, Path]]:
    """Read records from `inputs`, write leaderboard.{md,csv,tex,png} into `out`, return rows and paths.

    `records`: records the caller already read from `inputs` (with their `_file`), used instead of
    reading them again.

    The four files are written as a set: all to temporaries first, then renamed, so a failure
    (e.g. a full disk) leaves the previous set whole and a reader never sees new tables beside
    an old figure.
    """
    paths = leaderboard_paths(out)
    records = read_records(inputs) if records is None else records
    rows = build_rows(records)
    with reading(*{r["_file"] for r in records}), atomic_paths(list(paths.values())) as temps:
        tmp = dict(zip(paths, temps, strict=True))
        tmp["md"].write_text(to_markdown(rows), encoding="utf-8")
        tmp["csv"].write_text(to_csv(rows), encoding="utf-8", newline="")
        tmp["tex"].write_text(to_latex(rows), encoding="utf-8")
        plot(rows, tmp["png"])
    return rows, paths
