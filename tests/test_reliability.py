"""Fault tests of issue 16: run-directory lock, no silent overwrite, validate-then-write resume,
non-finite weights and samples, non-regular outputs, hostile pickles and PNGs, stale temporary
files, and leaderboard sets that a failed write leaves whole."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from test_cli_errors import lidc_folder, png, record

import ambiseg
from ambiseg.cli import main
from ambiseg.data.lidc import LidcDataset
from ambiseg.data.validate import decode_png
from ambiseg.errors import AmbisegError, DataError, NonFiniteError
from ambiseg.evaluation import evaluate_method
from ambiseg.files import atomic_path, write_text
from ambiseg.leaderboard import write_leaderboard
from ambiseg.lock import LOCK_NAME, RunLockedError, run_lock

SMOKE = ["--preset", "smoke", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of `ambiseg argv` run in-process."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err.strip()


def one_line_error(code: int, err: str) -> bool:
    return code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished smoke run of det-unet (trained once for the module; tests copy it)."""
    out = tmp_path_factory.mktemp("runs") / "det"
    with pytest.raises(SystemExit) as info:
        main(["train", "det-unet", *SMOKE, "--out", str(out)])
    assert info.value.code == 0
    return out


def copy_run(run: Path, dest: Path) -> Path:
    dest.mkdir()
    for path in run.iterdir():
        (dest / path.name).write_bytes(path.read_bytes())
    return dest


# ---- 1. the run directory is locked ----------------------------------------------------------
HOLD = (
    "import sys, time; from ambiseg.lock import run_lock\n"
    "with run_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(120)"
)


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(["train", "det-unet", *SMOKE, "--out", str(out)], capsys)
        assert one_line_error(code, err), err
        assert f"in use by process {holder.pid}" in err
        assert not (out / "last.safetensors").exists() and not (out / "config.json").exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a dead pid
        holder.wait()
    assert (out / LOCK_NAME).read_text().split() == [str(holder.pid)]
    with pytest.raises(SystemExit) as info:
        main(["train", "det-unet", *SMOKE, "--out", str(out)])
    assert info.value.code == 0
    assert (out / "last.safetensors").exists() and not (out / LOCK_NAME).exists()


def test_the_lock_is_reentrant_in_a_process_and_exclusive_across_processes(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        other = subprocess.run(
            [sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=60
        )
        assert other.returncode != 0 and RunLockedError.__name__ in other.stderr
    assert not (tmp_path / LOCK_NAME).exists()


# ---- 2. a finished run is not replaced silently -----------------------------------------------
def test_training_over_a_run_is_refused_unless_overwrite(run, tmp_path, capsys):
    out = copy_run(run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_cli(["train", "det-unet", *SMOKE, "--out", str(out)], capsys)
    assert one_line_error(code, err) and "already holds a run" in err and "--overwrite" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    inode = (out / "last.safetensors").stat().st_ino
    with pytest.raises(SystemExit) as info:
        main(["train", "det-unet", *SMOKE, "--out", str(out), "--overwrite"])
    assert info.value.code == 0
    assert (out / "last.safetensors").stat().st_ino != inode  # written again


# ---- 3. a refused resume writes nothing --------------------------------------------------------
def damage(path: Path, **meta_changes) -> None:
    """Rewrite checkpoint `path` with its header's training state changed."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["ambiseg"])
    tensors = load_file(str(path))
    if "rng" in meta_changes:
        tensors["rng/torch"] = tensors["rng/torch"][:100].clone()
        meta_changes.pop("rng")
    meta.update(meta_changes)
    save_file(tensors, str(path), metadata={"ambiseg": json.dumps(meta)})


@pytest.mark.parametrize(
    "argv, change, expected",
    [
        (["train", "probunet"], {}, "of method 'det-unet', not 'probunet'"),
        (["train", "det-unet", "--set", "transport.widths=[4,8]"], {}, "does not fit this method's configuration"),
        (["train", "det-unet", "--seed", "3"], {}, "trained with seed 0, not 3"),
        (["train", "det-unet"], {"step": "abc"}, "training state 'step' is 'abc'"),
        (["train", "det-unet"], {"stage_index": 7}, "training state 'stage_index' is 7"),
        (["train", "det-unet"], {"rng": True}, "training state is damaged"),
        (
            ["train", "det-unet"],
            {"stage_index": 0, "step": 1, "optimizer": {"param_groups": [], "scalars": {}}},
            "training state is damaged",
        ),
        (["train", "det-unet", "--set", "data.size=48"], {}, "was trained on synthetic (preset smoke"),
        (["train", "det-unet"], {"stage_index": 0, "step": 10**9}, "'step' is 1000000000"),
    ],
    ids=[
        "other method",
        "other shape",
        "other seed",
        "step abc",
        "stage out of range",
        "truncated rng",
        "wrong optimizer groups",
        "other data",
        "step past the stage",
    ],
)
def test_a_refused_resume_keeps_config_json(run, tmp_path, capsys, argv, change, expected):
    out = copy_run(run, tmp_path / "run")
    if change:
        damage(out / "last.safetensors", **change)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_cli([*argv, *SMOKE, "--resume", "--out", str(out)], capsys)
    assert one_line_error(code, err) and expected in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the fix named is the resume's, not eval's "build from the checkpoint's config"
    if "transport.widths=[4,8]" in argv:
        assert "drop the --set that changes the network" in err, err


def test_a_checkpoint_whose_config_disagrees_with_its_tensors_is_called_damaged(run, tmp_path, capsys):
    from safetensors import safe_open

    path = copy_run(run, tmp_path / "run") / "last.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        config = json.loads(fh.metadata()["ambiseg"])["config"]
    damage(path, config={**config, "transport": {**config["transport"], "widths": [4, 8]}})
    code, err = run_cli(["eval", str(path), "--samples", "2"], capsys)
    assert one_line_error(code, err) and "disagree with the config stored beside them" in err, err


# ---- 4. non-finite weights or samples are an error, never a score -------------------------------
def test_nan_weights_are_refused_before_scoring(tmp_path, capsys):
    method = ambiseg.build("det-unet", preset="smoke")
    with torch.no_grad():
        next(iter(method.parameters())).fill_(float("nan"))
    from ambiseg.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "nan.safetensors", method, method.config, stage_index=1)
    out = tmp_path / "metrics.json"
    code, err = run_cli(["eval", str(tmp_path / "nan.safetensors"), "--samples", "2", "--out", str(out)], capsys)
    assert one_line_error(code, err) and "NaN or inf" in err, err
    assert not out.exists()


def test_non_finite_samples_are_not_scored():
    method = ambiseg.build("det-unet", preset="smoke")
    data = ambiseg.data.build("synthetic", split="test", limit=2, size=16)
    method.sample = lambda images, n, **kw: torch.full((images.shape[0], n, 16, 16), float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite samples for test image 0"):
        evaluate_method(method, data, counts=(2,), seed=0, device=torch.device("cpu"), warmup=False)


def test_training_never_saves_non_finite_weights(tmp_path):
    from ambiseg.train import Trainer, TrainingError

    method = ambiseg.build("det-unet", preset="smoke")
    data = ambiseg.data.build("synthetic", split="train", limit=4, size=16)
    trainer = Trainer(method, data, None, out_dir=tmp_path, progress=False)
    with torch.no_grad():
        next(iter(method.parameters())).fill_(float("inf"))
    with pytest.raises(TrainingError, match="non-finite"):
        trainer._save("last.safetensors", None, stage="transport", step=1)
    assert not (tmp_path / "last.safetensors").exists()


# ---- 5. outputs are new paths or regular files --------------------------------------------------
def test_outputs_that_are_not_regular_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [fifo, tmp_path]
    if os.geteuid() == 0:  # as root, a character device (like /dev/null) could be replaced
        os.mknod(tmp_path / "null", 0o600 | 0o020000, os.makedev(1, 3))
        targets.append(tmp_path / "null")
    for target in targets:
        mode = target.stat().st_mode
        with pytest.raises(AmbisegError, match="refusing to write"):
            write_text(target, "x")
        assert target.stat().st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in targets if p != tmp_path)


# ---- 6. hostile pickles ------------------------------------------------------------------------
def test_a_200k_deep_pickle_is_refused_in_one_line_not_a_crash(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    # {((((...)),): {}}: hashing the 200,000-deep key overflowed the C stack (exit 139)
    (root / "data.pickle").write_bytes(b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"}s.")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ambiseg",
            "bench",
            "--methods",
            "det-unet",
            "--data",
            "lidc",
            "--root",
            str(root),
            "--preset",
            "smoke",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and "nests objects more than" in err, (proc.returncode, err)


# ---- 7. PNGs decoded by mode; duplicate ids refused --------------------------------------------
def encode(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_palette_png_is_decoded_through_its_palette():
    image = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    image.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    assert decode_png(encode(image), where="p").tolist() == [[0, 200], [200, 0]]  # not the indices 0/1
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert decode_png(encode(image), where="p").shape == (2, 2, 3)  # colours stay colours


def test_16_bit_png_keeps_its_range():
    grey = np.array([[0, 65535], [32896, 1000]], np.uint16)
    assert decode_png(encode(Image.fromarray(grey)), where="g").tolist() == grey.tolist()
    rgb = decode_png(encode(Image.fromarray(grey)), where="g", mode="RGB")
    assert rgb[..., 0].tolist() == [[0, 255], [128, 4]]  # scaled to 8 bits, not clipped at 255


def test_a_zip_holding_the_tree_twice_is_refused(tmp_path):
    folder = lidc_folder(tmp_path / "folder")
    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for copy in ("a", "b"):
            for path in sorted(folder.rglob("*.png")):
                zf.write(path, f"{copy}/{path.relative_to(folder)}")
    with pytest.raises(DataError, match="is there twice"):
        LidcDataset(root=str(archive), split="all")


def test_slice_names_with_non_ascii_digits_load(tmp_path):
    root = lidc_folder(tmp_path / "lidc")
    for nodule in (root / "LIDC-IDRI-slices").glob("*/nodule-0"):
        for folder in nodule.iterdir():
            png(folder / "slice-1².png", np.asarray(Image.open(folder / "slice-0.png")))
    data = LidcDataset(root=str(root), split="all")
    assert len(data) == 6 and sum(i.endswith("slice-1²") for i in data.ids) == 3


# ---- 8. stale temporaries of a killed write ---------------------------------------------------
def test_leaderboard_skips_a_temporary_left_by_a_killed_write(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps(record()))
    (results / ".b.json.k2j4l5m6.tmp.json").write_text('{"kind": "ambiseg-bench-rec')  # cut off mid-write
    with pytest.raises(SystemExit) as info:
        main(["leaderboard", str(tmp_path)])
    assert info.value.code == 0, capsys.readouterr().err
    assert "det-unet" in (tmp_path / "leaderboard.md").read_text()


# ---- 9. a full or read-only disk is one line ----------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["ENOSPC", "EROFS"])
def test_a_full_or_read_only_disk_is_one_line_for_train(tmp_path, capsys, monkeypatch, code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("ambiseg.checkpoint.save_file", fail)
    out = tmp_path / "run"
    err_code, err = run_cli(["train", "det-unet", *SMOKE, "--out", str(out)], capsys)
    assert one_line_error(err_code, err) and os.strerror(code) in err, err
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


# ---- 11. the leaderboard set is written whole or not at all -------------------------------------
def test_a_failed_leaderboard_write_leaves_the_previous_set(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.json").write_text(json.dumps(record()))
    old = {ext: f"old {ext}" for ext in ("md", "csv", "tex", "png")}
    for ext, text in old.items():
        (tmp_path / f"leaderboard.{ext}").write_text(text)

    def full_disk(rows, path):  # the figure is written last; md, csv and tex are done by then
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("ambiseg.leaderboard.plot", full_disk)
    code, err = run_cli(["leaderboard", str(tmp_path)], capsys)
    assert one_line_error(code, err) and "No space left on device" in err, err
    assert {ext: (tmp_path / f"leaderboard.{ext}").read_text() for ext in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["results", *(f"leaderboard.{e}" for e in old)])
    monkeypatch.undo()
    rows, paths = write_leaderboard([tmp_path], tmp_path)
    assert all(paths[ext].read_bytes() != old[ext].encode() for ext in old)


def test_atomic_path_turns_a_failed_write_into_one_error_and_keeps_the_file(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(AmbisegError, match="cannot write .*f.txt: No space left on device; the previous file is kept"):
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_checkpoint_naming_a_component_not_installed_says_so(run, tmp_path, capsys):
    from safetensors import safe_open

    path = copy_run(run, tmp_path / "run") / "last.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        config = json.loads(fh.metadata()["ambiseg"])["config"]
    damage(path, config={**config, "transport": {**config["transport"], "name": "my-plugin-map"}})
    code, err = run_cli(["eval", str(path), "--samples", "2"], capsys)
    assert one_line_error(code, err) and "unknown transport 'my-plugin-map'" in err and "install its plug-in" in err, (
        err
    )


@pytest.mark.parametrize(("stage_index", "expected"), [(99, "training state 'stage_index' is 99"), (0, None)])
def test_eval_refuses_a_damaged_stage_and_flags_an_unfinished_run(run, tmp_path, capsys, stage_index, expected):
    path = copy_run(run, tmp_path / "run") / "last.safetensors"
    damage(path, stage_index=stage_index)
    out = tmp_path / "metrics.json"
    code, err = run_cli(["eval", str(path), "--samples", "2", "--out", str(out)], capsys)
    if expected is not None:
        assert one_line_error(code, err) and expected in err, err
        return
    assert code == 0 and "holds an unfinished run" in err, err
    assert json.loads(out.read_text())["stages_finished"] == 0


# ---- resume after damage to the other files of a run (issue 30, own cases) ---------------------
@pytest.mark.parametrize(
    ("damage_run", "expected"),
    [
        (lambda out: (out / "last.safetensors").unlink(), "holds best.safetensors but no last.safetensors"),
        (lambda out: (out / "best.safetensors").write_bytes(b""), "best.safetensors is not a readable safetensors"),
        (
            lambda out: (out / "last.safetensors").write_bytes((out / "last.safetensors").read_bytes()[:1000]),
            "last.safetensors is not a readable safetensors",
        ),
    ],
    ids=["last deleted", "best emptied", "last truncated"],
)
def test_a_resume_of_a_damaged_run_is_refused_and_keeps_its_files(run, tmp_path, capsys, damage_run, expected):
    out = copy_run(run, tmp_path / "run")
    damage_run(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_cli(["train", "det-unet", *SMOKE, "--resume", "--out", str(out)], capsys)
    assert one_line_error(code, err) and expected in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_lidc_root_that_is_a_fifo_is_named_as_such(tmp_path, capsys, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("AMBISEG_LIDC", str(fifo))
    code, err = run_cli(["show", "--data", "lidc", "--index", "0", "--out", str(tmp_path / "f.png")], capsys)
    assert one_line_error(code, err) and "is neither a file nor a folder" in err, err
    assert not (tmp_path / "f.png").exists()
