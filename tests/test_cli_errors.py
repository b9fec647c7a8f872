"""Table-driven bad inputs: each exits 2 with one readable line, no traceback, outputs intact."""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import ambiseg
from ambiseg.checkpoint import save_checkpoint
from ambiseg.cli import main


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def lidc_folder(root, *, mask_size=16, mask_value=255):
    base = root / "LIDC-IDRI-slices"
    for patient in range(3):
        nodule = base / f"LIDC-IDRI-{patient:04d}" / "nodule-0"
        png(nodule / "images" / "slice-0.png", np.full((16, 16), 100))
        for k in range(4):
            mask = np.zeros((mask_size, mask_size))
            mask[4:8, 4:8] = mask_value
            png(nodule / f"mask-{k}" / "slice-0.png", mask)
    return root


def record(**changes):
    """A minimal valid bench record, with `changes` applied (a value of ... deletes the key)."""
    rec = {
        "kind": "ambiseg-bench-record",
        "schema": 1,
        "created": "2025-01-01T00:00:00+00:00",
        "method": "det-unet",
        "dataset": "synthetic",
        "preset": "smoke",
        "seed": 0,
        "per_image": {"GED16": [0.5, 0.25]},
        "timing": {"train_s": 1.0, "sample_s_per_image": 0.1, "samples_per_image": 16},
        "params": 10,
        "env": {"device": "cpu", "device_name": "CPU"},
    }
    for key, value in changes.items():
        if value is ...:
            del rec[key]
        else:
            rec[key] = value
    return rec


def huge_png(side):
    """A 1x1 grey PNG whose header claims `side` x `side` pixels."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def header_checkpoint(path, header):
    save_file({"model/w": torch.zeros(1)}, str(path), metadata={"ambiseg": header})
    return path


def pickle_dir(path, image):
    path.mkdir()
    with open(path / "data.pickle", "wb") as fh:
        pickle.dump({"s0": {"image": image, "masks": [np.zeros((4, 4), np.uint8)] * 4, "series_uid": "p0"}}, fh)
    return path


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    f = {"tmp": tmp}
    method = ambiseg.build("det-unet", preset="smoke")
    f["ckpt"] = tmp / "ok.safetensors"
    save_checkpoint(f["ckpt"], method, method.config, stage_index=1)
    f["truncated"] = tmp / "truncated.safetensors"
    f["truncated"].write_bytes(f["ckpt"].read_bytes()[:300])
    f["other_run"] = tmp / "other-run"
    f["other_run"].mkdir()
    save_checkpoint(f["other_run"] / "last.safetensors", method, method.config, stage_index=0, step=1)
    f["empty"] = tmp / "empty"
    f["empty"].mkdir()
    f["mismatch"] = lidc_folder(tmp / "mismatch", mask_size=8)
    f["nonbinary"] = lidc_folder(tmp / "nonbinary", mask_value=7)
    nan_dir = tmp / "nan"
    nan_dir.mkdir()
    image = np.full((16, 16), 0.5, dtype=np.float32)
    image[3, 3] = np.nan
    with open(nan_dir / "data.pickle", "wb") as fh:
        pickle.dump({"s0": {"image": image, "masks": [np.zeros((16, 16), np.uint8)] * 4, "series_uid": "p0"}}, fh)
    evil_dir = tmp / "evil"
    evil_dir.mkdir()
    f["marker"] = tmp / "pwned"
    with open(evil_dir / "data.pickle", "wb") as fh:
        pickle.dump({"s0": Evil(f["marker"])}, fh)
    f["nan"], f["evil"] = nan_dir, evil_dir
    f["notes"] = tmp / "notes.json"
    f["notes"].write_text('{"not": "a record"}')
    f["blocker"] = tmp / "a-file"
    f["blocker"].write_text("in the way")
    f["fifo"] = tmp / "fifo"
    os.mkfifo(f["fifo"])
    flow = ambiseg.build("atfm", preset="smoke")
    f["flow_ckpt"] = tmp / "flow.safetensors"
    save_checkpoint(f["flow_ckpt"], flow, flow.config, stage_index=len(flow.stages))
    nan_state = {k: v.clone() for k, v in method.state_dict().items()}
    next(v for v in nan_state.values() if v.is_floating_point()).fill_(float("nan"))
    method.load_state_dict(nan_state)
    f["nan_ckpt"] = tmp / "nan.safetensors"
    save_checkpoint(f["nan_ckpt"], method, method.config, stage_index=1)
    meta = {"format": 1, "ambiseg_version": ambiseg.__version__, "method": "det-unet"}
    f["hdr_text"] = header_checkpoint(tmp / "h1.safetensors", "{oops")
    f["hdr_list"] = header_checkpoint(tmp / "h2.safetensors", "[1, 2]")
    f["hdr_noconfig"] = header_checkpoint(tmp / "h3.safetensors", json.dumps(meta))
    f["hdr_deep"] = header_checkpoint(tmp / "h4.safetensors", "[" * 100_000 + "]" * 100_000)
    badcrc = tmp / "badcrc.zip"
    with zipfile.ZipFile(badcrc, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((tmp / "nonbinary").rglob("*.png")):
            data = bytearray(path.read_bytes())
            zf.writestr(str(path.relative_to(tmp / "nonbinary")), bytes(data))
    raw = bytearray(badcrc.read_bytes())
    at = 0
    while (at := raw.find(b"\x89PNG", at + 1)) != -1:
        raw[at + 40] ^= 0xFF
    badcrc.write_bytes(bytes(raw))
    f["badcrc"] = badcrc
    for side, name in ((40_000, "bomb"), (10_000, "big_png")):
        root = lidc_folder(tmp / name)
        image = root / "LIDC-IDRI-slices" / "LIDC-IDRI-0000" / "nodule-0" / "images" / "slice-0.png"
        image.write_bytes(huge_png(side))
        f[name] = root
    f["ragged"] = pickle_dir(tmp / "ragged", [[0.1, 0.2], [0.3]])
    deep = [0.5]
    for _ in range(64):
        deep = [deep]
    f["dims65"] = pickle_dir(tmp / "dims65", deep)
    f["empty_image"] = pickle_dir(tmp / "empty-image", np.zeros((0, 0), np.float32))
    big = tmp / "bytearray"
    big.mkdir()
    (big / "data.pickle").write_bytes(
        b"\x80\x02c__builtin__\nbytearray\n\x8a\x08" + (2**62).to_bytes(8, "little") + b"\x85R."
    )
    f["bytearray"] = big
    for name, rec in {
        "no_per_image": record(per_image=...),
        "seed_text": record(seed="abc"),
        "created_int": record(created=5),
        "schema_99": record(schema=99),
        "per_image_text": record(per_image={"GED16": ["x"]}),
    }.items():
        (tmp / f"rec-{name}.json").write_text(json.dumps(rec))
        f[f"rec_{name}"] = tmp / f"rec-{name}.json"
    return f


CASES = [
    ("unknown method", "bench --methods atfmm --preset smoke --out {out}", "unknown method 'atfmm'"),
    ("unknown method in train", "train probunett --preset smoke --out {out}", "did you mean"),
    ("unknown sampler", "train det-unet --preset smoke --set sampler=eulr --out {out}", "unknown sampler 'eulr'"),
    ("unknown dataset", "bench --methods det-unet --data lidcc --preset smoke --out {out}", "unknown dataset 'lidcc'"),
    ("unknown preset", "bench --methods det-unet --preset fast --out {out}", "unknown preset 'fast'"),
    ("malformed --set", "train det-unet --preset smoke --set prior.rank --out {out}", "--set expects key=value"),
    (
        "unknown config key",
        "train det-unet --preset smoke --set prio.rank=3 --out {out}",
        "unknown config key 'prio.rank'",
    ),
    ("unknown option", "train det-unet --preset smoke --set transport.widht=3 --out {out}", "no option 'widht'"),
    ("bad option type", "train det-unet --preset smoke --set transport.widths=abc --out {out}", "cannot read"),
    (
        "bad optional value",
        "train cimd --preset smoke --set transport.truncation=abc --out {out}",
        "option 'truncation': cannot read 'abc' as int | None",
    ),
    (
        "bad training value",
        "train det-unet --preset smoke --set train.transport.lr=fast --out {out}",
        "train.transport.lr: cannot read 'fast' as float",
    ),
    (
        "unknown training option",
        "train det-unet --preset smoke --set train.transport.lrr=1 --out {out}",
        "train.transport has no option 'lrr'",
    ),
    (
        "bad top-level size",
        "train det-unet --preset smoke --set image_size=big --out {out}",
        "image_size: cannot read 'big'",
    ),
    (
        "size contradicting the data",
        "train det-unet --preset smoke --set image_size=48 --out {out}",
        "image_size=48 contradicts the data",
    ),
    ("component size", "train atfm --preset smoke --set prior.in_channels=3 --out {out}", "use 'in_channels'"),
    (
        "bad data value",
        "train det-unet --preset smoke --set data.limit=abc --out {out}",
        "data.limit: cannot read 'abc'",
    ),
    (
        "unknown data option",
        "bench --methods det-unet --preset smoke --set data.limt=3 --out {out}",
        "no option 'limt'",
    ),
    ("option the delta prior lacks", "eval {ckpt} --set prior.rank=3", "prior 'delta' has no option 'rank'"),
    (
        "eval setting that changes weights",
        "eval {ckpt} --set transport.widths=[4,8,16]",
        "would change the trained network",
    ),
    ("training setting in eval", "eval {ckpt} --set train.transport.lr=1", "cannot change"),
    ("zero samples", "bench --methods det-unet --preset smoke --samples 0 --out {out}", "--samples must be positive"),
    (
        "negative samples",
        "bench --methods det-unet --preset smoke --samples 16,-4 --out {out}",
        "--samples must be positive",
    ),
    (
        "non-integer samples",
        "bench --methods det-unet --preset smoke --samples a,b --out {out}",
        "comma-separated integers",
    ),
    (
        "steps < 1",
        "bench --methods det-unet --preset smoke --set sampler=euler --set sampler.steps=0 --out {out}",
        None,
    ),
    ("max-batch 0", "bench --methods det-unet --preset smoke --max-batch 0 --out {out}", "--max-batch must be >= 1"),
    ("bad seeds", "bench --methods det-unet --preset smoke --seeds x --out {out}", "--seeds expects"),
    ("bad device", "bench --methods det-unet --preset smoke --device tpu9 --out {out}", "device"),
    ("truncated checkpoint", "eval {truncated} --preset smoke", "not a readable safetensors file"),
    ("missing checkpoint", "eval {tmp}/nope.safetensors --preset smoke", "does not exist"),
    (
        "checkpoint of another method",
        "train probunet --preset smoke --resume --out {other_run}",
        "of method 'det-unet', not 'probunet'",
    ),
    (
        "root does not exist",
        "bench --methods det-unet --data lidc --root {tmp}/nowhere --preset smoke --out {out}",
        "nowhere",
    ),
    ("empty root", "bench --methods det-unet --data lidc --root {empty} --preset smoke --out {out}", "empty"),
    (
        "masks of mismatched size",
        "bench --methods det-unet --data lidc --root {mismatch} --preset smoke --out {out}",
        "mask",
    ),
    (
        "non-binary masks",
        "bench --methods det-unet --data lidc --root {nonbinary} --preset smoke --out {out}",
        "binary",
    ),
    ("NaN image", "bench --methods det-unet --data lidc --root {nan} --preset smoke --out {out}", "NaN"),
    ("crafted pickle", "bench --methods det-unet --data lidc --root {evil} --preset smoke --out {out}", "refus"),
    ("out is a file", "bench --methods det-unet --preset smoke --out {blocker}", "is a file"),
    ("leaderboard of a non-record", "leaderboard {notes} --out {out}", "is not a results file"),
    ("sample index out of range", "sample {ckpt} --preset smoke --indices 99 --out {out}", "out of range"),
    # issue 16
    ("eval max-batch 0", "eval {ckpt} --samples 2 --max-batch 0", "--max-batch must be >= 1"),
    # issue 14
    ("eval image-batch 0", "eval {ckpt} --samples 2 --image-batch 0", "--image-batch must be >= 1"),
    ("bench image-batch -1", "bench --methods det-unet --preset smoke --image-batch -1 --out {out}", "--image-batch"),
    ("unknown precision", "eval {ckpt} --samples 2 --precision fp16", "fp16"),
    ("absurd sampler steps", "eval {flow_ckpt} --samples 2 --set sampler.steps=1e9", "steps must be at most 10000"),
    ("absurd sample count", "eval {ckpt} --samples 1000000000", "at most 10000"),
    ("absurd sample count in sample", "sample {ckpt} --samples 1000000000 --out {out}", "between 1 and 10000"),
    (
        "absurd diffusion steps",
        "train cimd --preset smoke --set transport.steps=1000000000 --out {out}",
        "at most 100000",
    ),
    (
        "seed beyond 64 bits",
        "train det-unet --preset smoke --seed 100000000000000000000000 --out {out}",
        "--seed must be between 0 and",
    ),
    ("negative seed in eval", "eval {ckpt} --samples 2 --seed -1", "--seed must be between 0 and"),
    (
        "seeds beyond 64 bits",
        "bench --methods det-unet --preset smoke --seeds 100000000000000000000 --out {out}",
        "--seeds must be between",
    ),
    ("meta device", "train det-unet --preset smoke --device meta --out {out}", "not supported"),
    ("mps device", "eval {ckpt} --samples 2 --device mps", "not supported"),
    ("NaN weights", "eval {nan_ckpt} --samples 2", "NaN or inf"),
    ("checkpoint header not JSON", "eval {hdr_text} --samples 2", "header is damaged (not JSON"),
    ("checkpoint header a list", "eval {hdr_list} --samples 2", "is a JSON list"),
    ("checkpoint header without config", "eval {hdr_noconfig} --samples 2", "no 'config'"),
    ("checkpoint header nested 100k deep", "eval {hdr_deep} --samples 2", "nested too deeply"),
    ("train over a run", "train det-unet --preset smoke --out {other_run}", "already holds a run"),
    ("resume and overwrite", "train det-unet --preset smoke --resume --overwrite --out {other_run}", "choose one"),
    ("eval --out a FIFO", "eval {ckpt} --samples 2 --out {fifo}", "not a regular file"),
    ("eval --out a folder", "eval {ckpt} --samples 2 --out {tmp}", "is a directory"),
    (
        "zip entry with a bad CRC",
        "bench --methods det-unet --data lidc --root {badcrc} --preset smoke --out {out}",
        "the zip is damaged",
    ),
    (
        "PNG header of 40000 x 40000",
        "bench --methods det-unet --data lidc --root {bomb} --preset smoke --out {out}",
        "too large to decode safely",
    ),
    (
        "PNG header of 10000 x 10000",
        "bench --methods det-unet --data lidc --root {big_png} --preset smoke --out {out}",
        "too large to decode safely",
    ),
    (
        "ragged pickle image",
        "bench --methods det-unet --data lidc --root {ragged} --preset smoke --out {out}",
        "not an array",
    ),
    ("65-dim pickle image", "bench --methods det-unet --data lidc --root {dims65} --preset smoke --out {out}", None),
    (
        "0x0 pickle image",
        "bench --methods det-unet --data lidc --root {empty_image} --preset smoke --out {out}",
        "non-empty 2-D",
    ),
    (
        "bytearray(2**62) pickle",
        "bench --methods det-unet --data lidc --root {bytearray} --preset smoke --out {out}",
        "bytearray from a int",
    ),
    ("record without per_image", "leaderboard {rec_no_per_image} --out {out}", "field 'per_image' is missing"),
    ("record seed not an int", "leaderboard {rec_seed_text} --out {out}", "field 'seed' is \"abc\", not int"),
    ("record created not a date", "leaderboard {rec_created_int} --out {out}", "field 'created' is 5, not str"),
    ("record of a newer schema", "leaderboard {rec_schema_99} --out {out}", "field 'schema' is 99"),
    ("record per_image not numbers", "leaderboard {rec_per_image_text} --out {out}", "field 'per_image.GED16'"),
]


@pytest.mark.parametrize("name, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(name, command, expected, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "leaderboard.md").write_text("earlier results\n")
    argv = shlex.split(command.format(out=out, **{k: v for k, v in files.items()}))
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    if expected:
        assert expected.lower() in err.lower(), err
    assert (out / "leaderboard.md").read_text() == "earlier results\n"
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.md"]
    assert not files["marker"].exists()  # the crafted pickle executed nothing
    if name == "checkpoint of another method":
        assert (files["other_run"] / "last.safetensors").read_bytes()[:8]  # still there, untouched


NEW_OUT = [
    ("train: a typo'd method", "train atfn --preset smoke --out {new}", "did you mean 'atfm'"),
    ("train: an unknown option", "train atfm --preset smoke --set prior.rnk=3 --out {new}", "did you mean 'rank'"),
    ("bench: a typo'd method", "bench --methods atfn --preset smoke --out {new}", "did you mean 'atfm'"),
    ("bench: an unknown option", "bench --methods atfm --preset smoke --set prior.rnk=3 --out {new}", "'rnk'"),
    ("sample: an index out of range", "sample {ckpt} --indices 99 --samples 2 --out {new}", "out of range"),
    ("sample: an unknown option", "sample {ckpt} --set prior.rnk=1 --samples 2 --out {new}", "'rnk'"),
    ("eval: a typo'd split", "eval {ckpt} --samples 2 --split tst --out {new}/eval.json", "--split"),
    ("show: an index out of range", "show --index 9999 --out {new}/item.png", "out of range"),
    ("leaderboard: not a record", "leaderboard {notes} --out {new}", "notes.json"),
]


@pytest.mark.parametrize("name, command, expected", NEW_OUT, ids=[c[0] for c in NEW_OUT])
def test_a_refused_command_leaves_no_new_folder(name, command, expected, files, tmp_path, capsys):
    """Nothing is written before the inputs are checked: --out two folders deep stays absent."""
    argv = shlex.split(command.format(new=tmp_path / "new" / "out", **files))
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    from ambiseg.files import atomic_paths

    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError), atomic_paths([tmp_path / "a" / "b" / "x.txt", tmp_path / "kept" / "y.txt"]):
        raise RuntimeError("the work failed")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []
