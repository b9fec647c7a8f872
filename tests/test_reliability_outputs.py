"""Bad inputs of issue 30 about outputs: an output never replaces an input, a checkpoint or a file
of another kind; every output of `sample` is checked before the work; records are checked for all
the leaderboard reads; names from records are escaped in every output format."""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from test_cli_errors import record
from test_reliability import ENV, one_line_error, run_cli

import ambiseg
from ambiseg.checkpoint import save_checkpoint
from ambiseg.errors import AmbisegError
from ambiseg.files import file_kind, reading, write_json, write_text
from ambiseg.leaderboard import newest_records
from ambiseg.results import read_records

EVAL = "--samples 2 --set data.test.limit=2"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under `root` with a digest of its bytes (links by target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[str(path)] = "dir" if path.is_dir() else "other"
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint with a link and a hard link to it, another run, and files of other kinds."""
    tmp = tmp_path_factory.mktemp("outputs")
    method = ambiseg.build("det-unet", preset="smoke")
    f = {"tmp": tmp, "ckpt": tmp / "run" / "last.safetensors", "other": tmp / "other" / "last.safetensors"}
    for path in (f["ckpt"], f["other"]):
        path.parent.mkdir()
        save_checkpoint(path, method, method.config, stage_index=1)
    f["link"] = tmp / "metrics.json"
    f["link"].symlink_to(f["ckpt"])
    f["hard"] = tmp / "hard.json"
    os.link(f["ckpt"], f["hard"])
    f["history"] = tmp / "run" / "history.csv"
    f["history"].write_text("stage,epoch,step,GED\ntransport,0,1,0.5\n")
    f["config"] = tmp / "run" / "config.json"
    f["config"].write_text('{"seed": 0}\n')
    f["fake_png"] = tmp / "weights.png"
    f["fake_png"].write_bytes(f["other"].read_bytes())
    f["npz_link"] = tmp / "sample-out"
    f["npz_link"].mkdir()
    (f["npz_link"] / "samples.npz").symlink_to(f["ckpt"])
    f["board"] = tmp / "board"
    (f["board"] / "results").mkdir(parents=True)
    (f["board"] / "results" / "a.json").write_text(json.dumps(record()))
    (f["board"] / "leaderboard.csv").write_bytes(f["other"].read_bytes())
    f["bench"] = tmp / "bench"
    (f["bench"] / "leaderboard.md").mkdir(parents=True)
    f["bench_file"] = tmp / "bench-file"
    f["bench_file"].mkdir()
    (f["bench_file"] / "results").write_text("in the way")
    f["zip"] = tmp / "lidc.zip"
    f["zip"].write_bytes(b"PK\x05\x06" + bytes(18))
    return f


# ---- A. an output never replaces an input, a checkpoint or a file of another kind ----------------
REFUSED = [
    ("eval --out its own checkpoint", f"eval {{ckpt}} {EVAL} --out {{ckpt}}", "it is an input of this command"),
    ("eval --out a link to its checkpoint", f"eval {{ckpt}} {EVAL} --out {{link}}", "input of this command (through"),
    ("eval --out a hard link to its checkpoint", f"eval {{ckpt}} {EVAL} --out {{hard}}", "input of this command"),
    ("eval --out another checkpoint", f"eval {{ckpt}} {EVAL} --out {{other}}", "JSON over"),
    ("eval --out a history CSV", f"eval {{ckpt}} {EVAL} --out {{history}}", "it holds text; choose another --out"),
    (
        "eval --out a bench record",
        f"eval {{ckpt}} {EVAL} --out {{board}}/results/a.json",
        "JSON (ambiseg-bench-record)",
    ),
    ("eval --out a zip", f"eval {{ckpt}} {EVAL} --out {{zip}}", "lidc.zip: it holds ZIP"),
    ("train --log another checkpoint", "train det-unet --preset smoke --out {tmp}/new --log {other}", "--log"),
    ("train --log a config JSON", "train det-unet --preset smoke --out {tmp}/new --log {config}", "it holds JSON"),
    ("show --out a checkpoint named .png", "show --index 0 --out {fake_png}", "it is a checkpoint"),
    ("show --out its checkpoint", "show --index 0 --checkpoint {ckpt} --out {ckpt}", "input of this command"),
    ("sample: samples.npz links to the checkpoint", "sample {ckpt} --samples 2 --out {npz_link}", "input of this"),
    ("leaderboard.csv is a checkpoint", "leaderboard {board}", "it is a checkpoint (safetensors)"),
    ("bench: leaderboard.md is a folder", "bench --methods det-unet --preset smoke --out {bench}", "a directory"),
    ("bench: results is a file", "bench --methods det-unet --preset smoke --out {bench_file}", "in the way"),
]


@pytest.mark.parametrize(("name", "command", "expected"), REFUSED, ids=[c[0] for c in REFUSED])
def test_an_output_never_replaces_an_input_a_checkpoint_or_another_kind(files, capsys, name, command, expected):
    before = snapshot(files["tmp"])
    code, err = run_cli(shlex.split(command.format(**files)), capsys)
    assert one_line_error(code, err) and expected in err, err
    assert snapshot(files["tmp"]) == before  # nothing written, nothing changed, no temporary left


def test_the_kind_check_is_at_every_write_too(tmp_path):
    """The last check before the rename, for writers that skipped the early one (the trainer's history)."""
    weights = tmp_path / "weights.json"  # a checkpoint under a misleading name
    save_checkpoint(weights, ambiseg.build("det-unet", preset="smoke"), {"method": "det-unet"})
    picture = tmp_path / "figure.json"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    before = snapshot(tmp_path)
    with pytest.raises(AmbisegError, match="it is a checkpoint"):
        write_json(weights, {"a": 1})
    with pytest.raises(AmbisegError, match="over .*figure.json: it holds PNG"):
        write_text(picture, "epoch,GED\n")
    with reading(weights), pytest.raises(AmbisegError, match="input of this command"):
        save_checkpoint(weights, ambiseg.build("det-unet", preset="smoke"), {"method": "det-unet"})
    assert snapshot(tmp_path) == before


def test_rewrites_of_the_same_kind_still_work(tmp_path):
    out = tmp_path / "m.json"
    write_json(out, {"a": 1})
    write_json(out, {"a": 2})  # its own results JSON
    log = tmp_path / "history.csv"
    write_text(log, "a\n")
    write_text(log, "a\n1\n")  # the history of the same run
    empty = tmp_path / "empty.json"
    empty.touch()
    write_json(empty, [])  # an empty file holds nothing to lose
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    write_json(dangling, {})  # the link is replaced, nothing it led to
    ckpt = tmp_path / "last.safetensors"
    method = ambiseg.build("det-unet", preset="smoke")
    save_checkpoint(ckpt, method, method.config, step=1)
    save_checkpoint(ckpt, method, method.config, step=2)  # the trainer replaces its checkpoints
    assert json.loads(out.read_text()) == {"a": 2} and log.read_text() == "a\n1\n"
    assert file_kind(ckpt) == "safetensors" and file_kind(empty) == "json" and not dangling.is_symlink()


def test_an_interrupted_write_keeps_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "m.json"
    out.write_text('{"old": true}\n')

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ambiseg.files.json.dumps", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_json(out, {"new": True})
    assert out.read_text() == '{"old": true}\n' and [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ---- K. sample checks every output before the work, and writes them as one set -----------------
def test_sample_refuses_a_figure_path_before_sampling(files, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "sample-test-0.png").mkdir(parents=True)
    code, err = run_cli(["sample", str(files["ckpt"]), "--samples", "2", "--out", str(out)], capsys)
    assert one_line_error(code, err) and "sample-test-0.png: it is a directory" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["sample-test-0.png"]  # no samples.npz


def test_a_failed_figure_keeps_the_previous_samples(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["sample", str(files["ckpt"]), "--samples", "2", "--indices", "0,1", "--out", str(out)]
    assert run_cli(argv, capsys)[0] == 0
    before = snapshot(out)
    real = Figure.savefig
    calls = []

    def second_fails(self, *args, **kwargs):  # the first figure is written, the second hits a full disk
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", second_fails)
    code, err = run_cli([*argv[:3], "3", *argv[4:]], capsys)
    assert one_line_error(code, err) and "No space left on device" in err, err
    assert snapshot(out) == before


# ---- H. records: every field the leaderboard reads, bounded JSON ----------------------------------
def edited(old: str, new: str) -> str:
    """A valid record as JSON text with `old` replaced by `new` (what `json.dumps` cannot write)."""
    text = json.dumps(record())
    assert old in text
    return text.replace(old, new, 1)


def timing(**changes):
    return {"train_s": 1.0, "sample_s_per_image": 0.1, "samples_per_image": 16, **changes}


DAMAGED = [
    ("100k deep", "[" * 100_000 + "]" * 100_000, "nested 100000 deep"),
    ("flops.per_image text", record(flops={"per_image": "abc"}), "field 'flops.per_image' is \"abc\""),
    ("untrained without samples", record(untrained={"GED": 0.5}), "field 'untrained.samples' is missing"),
    ("untrained.samples 0", record(untrained={"GED": 0.5, "samples": 0}), "not a positive count"),
    ("per-image lists of two lengths", record(per_image={"GED16": [0.5], "HM-IoU16": [0.1, 0.2]}), "not 1"),
    ("untrained per-image of another length", record(untrained_per_image={"GED16": [0.5]}), "holds 1 values, not 2"),
    ("per-image empty", record(per_image={"GED16": []}), "not a non-empty list"),
    ("per-image Infinity", edited("0.25", "Infinity"), "Infinity is not JSON"),
    ("per-image NaN literal", edited("0.25", "NaN"), "NaN is not JSON"),
    ("per-image 1e999", edited("0.25", "1e999"), "beyond the range of a float"),
    ("params 10**400", record(params=10**400), "field 'params'"),
    ("seed of 5000 digits", edited('"seed": 0', '"seed": ' + "9" * 5000), "not a results file"),
    ("metrics a list", record(metrics=[1, 2]), "field 'metrics' is [1, 2], not dict"),
    ("negative time", record(timing=timing(sample_s_per_image=-1.0)), "not a finite number >= 0"),
    ("created past the calendar in UTC", record(created="0001-01-01T00:00:00+23:59"), "not an ISO date-time"),
    ("created a month 13", record(created="2025-13-01T00:00:00"), "not an ISO date-time"),
    ("protocol.name a number", record(protocol={"name": 5}), "field 'protocol.name' is 5"),
    ("not UTF-8", edited("det-unet", "d\xe9t").encode("latin-1"), "not UTF-8"),
]


@pytest.mark.parametrize(("name", "content", "expected"), DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_record_is_one_line(tmp_path, capsys, name, content, expected):
    path = tmp_path / "results" / "a.json"
    path.parent.mkdir()
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "leaderboard.md").write_text("earlier\n")
    code, err = run_cli(["leaderboard", str(tmp_path)], capsys)
    assert one_line_error(code, err) and expected in err, err
    assert (tmp_path / "leaderboard.md").read_text() == "earlier\n"


def test_a_record_over_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    (tmp_path / "a.json").write_text(json.dumps(record()))
    monkeypatch.setattr("ambiseg.results.MAX_RECORD_BYTES", 100)
    with pytest.raises(AmbisegError, match="over 0 MB; not a results file"):
        read_records([tmp_path / "a.json"])


def test_the_newest_record_is_the_latest_instant_not_the_largest_text():
    utc = record(created="2025-01-01T10:00:00+00:00", per_image={"GED16": [0.1, 0.1]})
    new_york = record(created="2025-01-01T09:00:00-05:00", per_image={"GED16": [0.9, 0.9]})  # 14:00 UTC
    naive = record(created="2025-01-01T11:00:00", per_image={"GED16": [0.5, 0.5]})  # read as UTC
    for order in ([utc, new_york, naive], [naive, new_york, utc]):
        assert [r["per_image"]["GED16"][0] for r in newest_records(order)] == [0.9]


def test_a_fifo_among_the_records_is_skipped_not_read(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps(record()))
    fifo = results / "b.json"
    os.mkfifo(fifo)

    def writer():  # unblocks a reader that opened the FIFO (a failure, not a hang)
        with contextlib.suppress(BrokenPipeError), open(fifo, "w") as fh:
            fh.write("not json")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    code, err = run_cli(["leaderboard", str(tmp_path)], capsys)
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # release the writer when nothing read it
    thread.join(5)
    assert code == 0, err


# ---- I. names from records are literal text in every output ----------------------------------
NAMES = [
    ("my&method%#1", r"my\&method%\#1", r"my\&method\%\#1 &"),
    ("a|b", r"a\|b", r"a\textbar{}b &"),
    ("a[/b]", r"a\[/b\]", "a[/b] &"),
    ("$\\foo$", r"\$\\foo\$", r"\$\textbackslash{}foo\$ &"),
    ("_hidden", r"\_hidden", r"\_hidden &"),
    ("two\nlines", "two lines", "two lines &"),
    ("métho∂-😀", "métho∂-😀", "métho∂-😀 &"),
]


def cells(line: str) -> int:
    """Cells of a Markdown table row: its unescaped pipes, less one."""
    return sum(token == "|" for token in re.findall(r"\\.|\|", line)) - 1


@pytest.mark.parametrize(("name", "md", "tex"), NAMES, ids=[n[0] for n in NAMES])
def test_a_method_name_is_literal_text_in_every_output(tmp_path, capsys, name, md, tex):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.json").write_text(json.dumps(record(method=name, dataset=name)))
    code, err = run_cli(["leaderboard", str(tmp_path)], capsys)
    assert code == 0, err
    table = (tmp_path / "leaderboard.md").read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| method"))
    row = table[header + 2]
    assert row.startswith(f"| {md} |") and cells(row) == cells(table[header]), row
    assert table[0].startswith(f"### {md} /")
    latex = (tmp_path / "leaderboard.tex").read_text(encoding="utf-8")
    assert tex in latex and latex.count("\n% ") == 1, latex
    with open(tmp_path / "leaderboard.csv", encoding="utf-8", newline="") as fh:
        assert [row["method"] for row in csv.DictReader(fh)] == [name]  # the CSV is data: the name as it is
    assert file_kind(tmp_path / "leaderboard.png") == "png"


def test_names_beyond_the_locale_are_written_as_utf8_and_printed_escaped(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.json").write_text(json.dumps(record(method="métho∂-😀")))
    env = {**ENV, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    done = subprocess.run(
        [sys.executable, "-m", "ambiseg", "leaderboard", str(tmp_path)], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert "métho∂-😀" in (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    assert b"m\\xe9tho\\u2202" in done.stdout
