"""Table-driven bad inputs: each exits 2 with one readable line, no traceback, outputs intact."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

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
    return f


CASES = [
    ("unknown method", "bench --methods atfmm --preset smoke --out {out}", "unknown method 'atfmm'"),
    ("unknown method in train", "train probunett --preset smoke --out {out}", "did you mean"),
    ("unknown sampler", "train det-unet --preset smoke --set sampler=eulr --out {out}", "unknown sampler 'eulr'"),
    ("unknown dataset", "bench --methods det-unet --data lidcc --preset smoke --out {out}", "unknown dataset 'lidcc'"),
    ("unknown preset", "bench --methods det-unet --preset fast --out {out}", "unknown preset 'fast'"),
    ("malformed --set", "train det-unet --preset smoke --set prior.rank --out {out}", "--set expects key=value"),
    ("unknown config key", "train det-unet --preset smoke --set prio.rank=3 --out {out}", "unknown config key 'prio.rank'"),
    ("unknown option", "train det-unet --preset smoke --set transport.widht=3 --out {out}", "no option 'widht'"),
    ("bad option type", "train det-unet --preset smoke --set transport.widths=abc --out {out}", "cannot read"),
    ("bad optional value", "train cimd --preset smoke --set transport.truncation=abc --out {out}",
     "option 'truncation': cannot read 'abc' as int | None"),
    ("bad training value", "train det-unet --preset smoke --set train.transport.lr=fast --out {out}",
     "train.transport.lr: cannot read 'fast' as float"),
    ("unknown training option", "train det-unet --preset smoke --set train.transport.lrr=1 --out {out}",
     "train.transport has no option 'lrr'"),
    ("bad top-level size", "train det-unet --preset smoke --set image_size=big --out {out}", "image_size: cannot read 'big'"),
    ("size contradicting the data", "train det-unet --preset smoke --set image_size=48 --out {out}",
     "image_size=48 contradicts the data"),
    ("component size", "train atfm --preset smoke --set prior.in_channels=3 --out {out}", "use 'in_channels'"),
    ("bad data value", "train det-unet --preset smoke --set data.limit=abc --out {out}", "data.limit: cannot read 'abc'"),
    ("unknown data option", "bench --methods det-unet --preset smoke --set data.limt=3 --out {out}", "no option 'limt'"),
    ("option the delta prior lacks", "eval {ckpt} --set prior.rank=3", "prior 'delta' has no option 'rank'"),
    ("eval setting that changes weights", "eval {ckpt} --set transport.widths=[4,8,16]", "would change the trained network"),
    ("training setting in eval", "eval {ckpt} --set train.transport.lr=1", "cannot change"),
    ("zero samples", "bench --methods det-unet --preset smoke --samples 0 --out {out}", "--samples must be positive"),
    ("negative samples", "bench --methods det-unet --preset smoke --samples 16,-4 --out {out}", "--samples must be positive"),
    ("non-integer samples", "bench --methods det-unet --preset smoke --samples a,b --out {out}", "comma-separated integers"),
    ("steps < 1", "bench --methods det-unet --preset smoke --set sampler=euler --set sampler.steps=0 --out {out}", None),
    ("max-batch 0", "bench --methods det-unet --preset smoke --max-batch 0 --out {out}", "--max-batch must be >= 1"),
    ("bad seeds", "bench --methods det-unet --preset smoke --seeds x --out {out}", "--seeds expects"),
    ("bad device", "bench --methods det-unet --preset smoke --device tpu9 --out {out}", "device"),
    ("truncated checkpoint", "eval {truncated} --preset smoke", "not a readable safetensors file"),
    ("missing checkpoint", "eval {tmp}/nope.safetensors --preset smoke", "does not exist"),
    ("checkpoint of another method", "train probunet --preset smoke --resume --out {other_run}", "of method 'det-unet', not 'probunet'"),
    ("root does not exist", "bench --methods det-unet --data lidc --root {tmp}/nowhere --preset smoke --out {out}", "nowhere"),
    ("empty root", "bench --methods det-unet --data lidc --root {empty} --preset smoke --out {out}", "empty"),
    ("masks of mismatched size", "bench --methods det-unet --data lidc --root {mismatch} --preset smoke --out {out}", "mask"),
    ("non-binary masks", "bench --methods det-unet --data lidc --root {nonbinary} --preset smoke --out {out}", "binary"),
    ("NaN image", "bench --methods det-unet --data lidc --root {nan} --preset smoke --out {out}", "NaN"),
    ("crafted pickle", "bench --methods det-unet --data lidc --root {evil} --preset smoke --out {out}", "refus"),
    ("out is a file", "bench --methods det-unet --preset smoke --out {blocker}", "is a file"),
    ("leaderboard of a non-record", "leaderboard {notes} --out {out}", "is not a results file"),
    ("sample index out of range", "sample {ckpt} --preset smoke --indices 99 --out {out}", "out of range"),
]


@pytest.mark.parametrize("name, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(name, command, expected, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "leaderboard.md").write_text("earlier results\n")
    argv = command.format(out=out, **{k: v for k, v in files.items()}).split()
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
