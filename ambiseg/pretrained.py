"""Trained weights by name: `load_pretrained("atfm", protocol="lidc-v1", seed=1)`.

The weights of every published leaderboard run are the small CPU checkpoints committed with its
records (`benchmarks/results/<protocol>/`). Nothing is downloaded (ambiseg never uses the
network at run time); the weights are looked up, in this order, in:

1. the folders in `AMBISEG_WEIGHTS` (separated like `PATH`),
2. `~/.cache/ambiseg/weights` (`$XDG_CACHE_HOME/ambiseg/weights` when that is set),
3. `benchmarks/results` of the source checkout ambiseg runs from, when it runs from one.

A folder holds either exported runs, `<protocol>/<method>-seed<k>/` with `checkpoint.safetensors`,
`record.json` and `MODEL_CARD.md` (what `export_pretrained` and `ambiseg pretrained --export`
write), or a bench output tree, `<protocol>/results/*.json` whose records name their checkpoints.
Every run comes with its record (metrics, timings, environment) and a model card made from it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AmbisegError
from .files import atomic_paths, json_text

if TYPE_CHECKING:
    from .method import Method

__all__ = [
    "Pretrained",
    "resolve_checkpoint",
    "find_pretrained",
    "list_pretrained",
    "load_pretrained",
    "export_pretrained",
    "model_card",
]

CHECKPOINT, RECORD, CARD = "checkpoint.safetensors", "record.json", "MODEL_CARD.md"
CARD_METRICS = ("GED100", "GED16", "HM-IoU32", "Diversity100", "Stray", "MissedConsensus", "SoftShare")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One published run: its checkpoint, its bench record and where they were found."""

    method: str
    protocol: str
    seed: int
    checkpoint: Path
    record: dict[str, Any]
    root: Path

    @property
    def card(self) -> str:
        return model_card(self.record)


def weight_roots() -> list[Path]:
    """The folders searched for weights, in order (see the module docstring)."""
    roots = [Path(p) for p in os.environ.get("AMBISEG_WEIGHTS", "").split(os.pathsep) if p]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    roots.append(cache / "ambiseg" / "weights")
    checkout = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    if (checkout.parent.parent / "pyproject.toml").is_file() and checkout.is_dir():
        roots.append(checkout)
    return roots


def _runs_in(root: Path, want: tuple[str, str, int] | None = None) -> list[Pretrained]:
    """The published runs under one root, exported ones first; with `want` = (method, protocol,
    seed) only the files that can hold that run are read (record files are named
    `<method>-<data>-<preset>-seed<k>-<stamp>.json`)."""
    from .results import load_json, read_records

    found: list[Pretrained] = []
    if not root.is_dir():
        return found
    method, protocol, seed = (glob.escape(want[0]), glob.escape(want[1]), want[2]) if want else ("*", "*", None)
    runs = f"{method}-seed{seed}" if want is not None else "*"
    for folder in sorted(root.glob(f"{protocol}/{runs}/{CHECKPOINT}")):
        record = load_json(folder.parent / RECORD, what="pretrained record")
        found.append(Pretrained(record["method"], folder.parent.parent.name, int(record["seed"]), folder, record, root))
    pattern = f"{method}-*-seed{seed}-*.json" if want is not None else "*.json"
    for protocol_dir in sorted(p for p in root.glob(protocol) if (p / "results").is_dir()):
        newest: dict[tuple[str, int], dict[str, Any]] = {}
        files = sorted(p for p in (protocol_dir / "results").glob(pattern) if p.is_file())
        for rec in read_records(files, allow_empty=True) if files else []:
            name = (rec.get("protocol") or {}).get("name")
            if rec.get("reference") or name != protocol_dir.name or not rec.get("checkpoint"):
                continue
            key = (rec["method"], rec["seed"])
            if key not in newest or rec["created"] > newest[key]["created"]:
                newest[key] = rec
        for (name, k), rec in sorted(newest.items()):
            path = protocol_dir / "runs" / Path(rec["checkpoint"]).parent.name / "last.safetensors"
            if path.is_file() and (want is None or (name, protocol_dir.name, k) == want):
                found.append(Pretrained(name, protocol_dir.name, k, path, rec, root))
    return found


def list_pretrained(roots: list[Path] | None = None) -> list[Pretrained]:
    """Every published run found offline (the first root that has a (method, protocol, seed) wins)."""
    seen: dict[tuple[str, str, int], Pretrained] = {}
    for root in weight_roots() if roots is None else roots:
        for run in _runs_in(root):
            seen.setdefault((run.method, run.protocol, run.seed), run)
    return list(seen.values())


def find_pretrained(method: str, *, protocol: str = "lidc-v1", seed: int = 0) -> Pretrained:
    """The published run of `method` under `protocol` and training `seed`; a clear error when it is
    not available offline, naming the folders searched and how to provide the weights."""
    from .registry import canonical_method

    name = canonical_method(method)
    for root in weight_roots():  # only the files that can hold this run are read
        for run in _runs_in(root, (name, protocol, seed)):
            if (run.method, run.protocol, run.seed) == (name, protocol, seed):
                return run
    runs = list_pretrained()
    have = sorted({f"{r.method} {r.protocol} seed {r.seed}" for r in runs if r.method == name}) or ["none"]
    searched = ", ".join(str(r) for r in weight_roots())
    raise AmbisegError(
        f"no pretrained weights of {name} for protocol {protocol}, seed {seed} are available offline "
        f"(searched {searched}; of {name} there are: {'; '.join(have)}). ambiseg downloads nothing: copy the "
        f"run's folder (`ambiseg pretrained {name} --protocol {protocol} --seed {seed} --export DIR` on a machine "
        "with the ambiseg repository, or its benchmarks/results/<protocol> tree) into a folder named in "
        "AMBISEG_WEIGHTS or into ~/.cache/ambiseg/weights"
    )


PREFIX = "pretrained:"


def resolve_checkpoint(path: Path) -> Path:
    """`path` itself, or the checkpoint a `pretrained:<method>/<protocol>/seed<k>` name stands for
    (e.g. `pretrained:atfm/lidc-v1/seed1`), so every command that reads a checkpoint takes a name."""
    text = str(path)
    if not text.startswith(PREFIX):
        return path
    parts = text[len(PREFIX) :].split("/")
    if len(parts) != 3 or not parts[2].startswith("seed") or not parts[2][4:].isdigit():
        raise AmbisegError(
            f"'{text}' is not a pretrained name; write pretrained:<method>/<protocol>/seed<k>, e.g. "
            "pretrained:atfm/lidc-v1/seed1 (`ambiseg pretrained` lists them)"
        )
    return find_pretrained(parts[0], protocol=parts[1], seed=int(parts[2][4:])).checkpoint


def load_pretrained(
    method: str, *, protocol: str = "lidc-v1", seed: int = 0, overrides: dict[str, Any] | None = None
) -> Method:
    """The trained `Method` of a published run, in eval mode, with `.pretrained` (a `Pretrained`:
    the checkpoint, the record and the model card). `overrides` change sampling options only, as
    in `ambiseg eval --set` (e.g. `{"sampler.steps": 10}`)."""
    from .checkpoint import load_method

    run = find_pretrained(method, protocol=protocol, seed=seed)
    model, _ = load_method(run.checkpoint, overrides=overrides)
    model.pretrained = run
    return model


def export_pretrained(run: Pretrained, out: str | os.PathLike) -> Path:
    """Copy `run` into `out/<protocol>/<method>-seed<k>/` (checkpoint, record, model card); returns
    that folder. A folder of such runs works as `AMBISEG_WEIGHTS` on a machine without the repository."""
    folder = Path(out) / run.protocol / f"{run.method}-seed{run.seed}"
    if folder.exists():
        raise AmbisegError(f"{folder} exists; remove it or choose another --export folder")
    record = {k: v for k, v in run.record.items() if not k.startswith("_")}
    record["checkpoint"] = CHECKPOINT
    with atomic_paths([folder / CHECKPOINT, folder / RECORD, folder / CARD]) as (weights, rec, card):
        shutil.copyfile(run.checkpoint, weights)
        rec.write_text(json_text(record), encoding="utf-8")
        card.write_text(model_card(record), encoding="utf-8")
    return folder


def _value(metrics: dict[str, Any], key: str) -> str:
    m = metrics.get(key)
    if not isinstance(m, dict) or m.get("mean") is None:
        return "-"
    return f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def model_card(record: dict[str, Any]) -> str:
    """A model card written from a bench record: what the run is, how it was trained and scored,
    its numbers with intervals, and what it is not for."""
    protocol = record.get("protocol") or {}
    env = record.get("env") or {}
    timing = record.get("timing") or {}
    metrics = record.get("metrics") or {}
    rows = "\n".join(f"| {k} | {_value(metrics, k)} |" for k in CARD_METRICS if k in metrics)
    config = record.get("config") or {}
    parts = "prior {}, transport {}, sampler {}".format(
        *((config.get(role) or {}).get("name", "?") for role in ("prior", "transport", "sampler"))
    )
    about = (
        f"Model: {record['method']} ({parts}; {record.get('params', 0):,} parameters), trained by `ambiseg bench` "
        f"with preset `{record.get('preset')}` on {record.get('dataset')} (protocol {protocol.get('name', '-')}: "
        f"{protocol.get('test_images', '-')} test images; samples {', '.join(map(str, record.get('counts', [])))}). "
        f"Training took {timing.get('train_s', 0) / 60:.1f} min on {env.get('device_name') or env.get('device')} "
        f"with {env.get('threads', '?')} thread(s); ambiseg {(env.get('versions') or {}).get('ambiseg', '?')}, "
        f"commit {env.get('commit', '?')}."
    )
    limits = (
        f"A research model for comparing methods under one protocol, not a clinical tool. It was trained on "
        f"{record.get('dataset')} images of {config.get('image_size') or '?'} px (training seed {record['seed']}; "
        "the data spec is in record.json) and says nothing about other scanners, image sizes or populations. "
        "Numbers of the `cpu` presets are not comparable with published full-size models (docs/leaderboard.md, "
        '"What is and is not comparable").'
    )
    return f"""# {record["method"]} - {protocol.get("name", "no protocol")}, seed {record["seed"]}

{textwrap.fill(about, 96)}

## Test metrics (mean and 95% bootstrap interval over the test images)

| metric | value |
|---|---|
{rows}

Definitions: docs/metrics.md. Compare only with rows of the same protocol (docs/leaderboard.md).

## Intended use and limits

{textwrap.fill(limits, 96)}
"""
