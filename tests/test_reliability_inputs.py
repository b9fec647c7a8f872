"""Bad inputs of issue 30 (causes D, E, F, G, J, mixed bit depths) and more of the same kind:
each is refused in one line (exit 2 at the CLI) or handled correctly, never a traceback or a hang."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_errors import lidc_folder, png
from test_reliability import ENV, one_line_error, run_cli

import ambiseg
from ambiseg import distributed
from ambiseg.checkpoint import save_checkpoint
from ambiseg.cli import main
from ambiseg.cli.options import MAX_SET_DEPTH, parse_sets
from ambiseg.data import lidc
from ambiseg.data.isic import Isic3Dataset
from ambiseg.data.lidc import LidcDataset, read_bounded
from ambiseg.data.synthetic import SyntheticDataset
from ambiseg.data.validate import MAX_ANNOTATORS, MAX_ITEMS, MAX_SIDE
from ambiseg.errors import AmbisegError, ConfigError, DataError

NODULE = "LIDC-IDRI-slices/LIDC-IDRI-0000/nodule-0"


def assert_one_line(code: int, err: str, expected: str) -> None:
    assert one_line_error(code, err), (code, err)
    assert expected.lower() in err.lower(), err


def zip_of(folder: Path, path: Path, *, first: str | None = None) -> Path:
    """`folder`'s PNGs as a zip at `path`; entries whose name holds `first` go first."""
    names = sorted(p for p in folder.rglob("*.png"))
    if first is not None:
        names.sort(key=lambda p: first not in str(p))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in names:
            zf.write(p, p.relative_to(folder).as_posix())
    return path


def patch_entry(path: Path, name: str, *, flags: int | None = None, size: int | None = None) -> None:
    """Set the general-purpose flags or the declared uncompressed size of entry `name` (local and
    central headers), as a hand-made or hostile zip would."""
    raw, encoded = bytearray(path.read_bytes()), name.encode()
    for signature, flags_at, size_at, name_at in ((b"PK\x03\x04", 6, 22, 30), (b"PK\x01\x02", 8, 24, 46)):
        at = raw.find(signature)
        while at != -1:
            if raw[at + name_at : at + name_at + len(encoded)] == encoded:
                if flags is not None:
                    raw[at + flags_at : at + flags_at + 2] = flags.to_bytes(2, "little")
                if size is not None:
                    raw[at + size_at : at + size_at + 4] = size.to_bytes(4, "little")
            at = raw.find(signature, at + 1)
    path.write_bytes(bytes(raw))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- D. one folder per rater number -------------------------------------------------------------
@pytest.mark.parametrize("form", ["folder", "zip, mask-01 first", "zip, mask-1 first"])
def test_two_folders_of_one_rater_number_are_refused(tmp_path, form):
    root = lidc_folder(tmp_path / "lidc")
    shutil.copytree(root / NODULE / "mask-1", root / NODULE / "mask-01")
    if form != "folder":
        root = zip_of(root, tmp_path / "lidc.zip", first="mask-01" if "01 first" in form else "mask-1/")
    with pytest.raises(DataError, match=r"mask-0?1 and .*mask-0?1 are both rater 1") as info:
        LidcDataset(root=str(root), split="all")
    assert "\n" not in str(info.value)


# ---- E. bounded sizes ----------------------------------------------------------------------------
def test_a_zip_entry_declaring_a_gigabyte_is_refused_before_reading(tmp_path):
    archive = zip_of(lidc_folder(tmp_path / "lidc"), tmp_path / "lidc.zip")
    patch_entry(archive, f"{NODULE}/images/slice-0.png", size=2**30)
    with pytest.raises(DataError, match="declares 1,073,741,824 bytes, over the limit"):
        LidcDataset(root=str(archive), split="all")


def test_a_zip_entry_expanding_more_than_the_ratio_is_refused(tmp_path):
    root = lidc_folder(tmp_path / "lidc")
    (root / NODULE / "images" / "slice-0.png").write_bytes(bytes(2 * 2**20))  # 2 MiB of zeros: ~2 KB deflated
    with pytest.raises(DataError, match="refused as a zip bomb"):
        LidcDataset(root=str(zip_of(root, tmp_path / "lidc.zip")), split="all")


def test_reads_are_bounded_whatever_a_header_says(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="holds more than 10 bytes"):
        read_bounded(io.BytesIO(bytes(11)), "x", limit=10)
    assert read_bounded(io.BytesIO(bytes(10)), "x", limit=10) == bytes(10)  # at the limit: read
    root = lidc_folder(tmp_path / "lidc")
    monkeypatch.setattr(lidc, "MAX_FILE_BYTES", 60)  # a 16x16 PNG is about 70 bytes
    with pytest.raises(DataError, match="holds more than 60 bytes"):
        LidcDataset(root=str(root), split="all")


def test_a_zip_entry_declaring_fewer_bytes_than_it_holds_is_damaged(tmp_path):
    archive = zip_of(lidc_folder(tmp_path / "lidc"), tmp_path / "lidc.zip")
    patch_entry(archive, f"{NODULE}/images/slice-0.png", size=10)
    with pytest.raises(DataError, match="the zip is damaged"):
        LidcDataset(root=str(archive), split="all")


@pytest.mark.parametrize("command", ["train det-unet --preset smoke --out {out}", "show --index 0 --out {out}/f.png"])
def test_an_absurd_image_size_is_one_line_and_writes_nothing(tmp_path, capsys, command):
    out = tmp_path / "out"
    argv = [*shlex.split(command.format(out=out)), "--set", "data.size=40000"]
    assert_one_line(*run_cli(argv, capsys), "size (pixels) must be an integer between 16 and 2,048")
    assert not out.exists()


def test_sizes_at_the_limit_pass_and_beyond_are_refused(tmp_path):
    at_limit = SyntheticDataset(size=MAX_SIDE, num_annotators=MAX_ANNOTATORS, sizes=(1, 1, 1))
    assert at_limit.image_shape == (MAX_SIDE, MAX_SIDE) and at_limit.num_annotators == MAX_ANNOTATORS
    beyond = [{"size": MAX_SIDE + 1}, {"sizes": (MAX_ITEMS + 1, 1, 1)}, {"num_annotators": MAX_ANNOTATORS + 1}]
    for options in [*beyond, {"seed": -1}]:
        with pytest.raises(ConfigError, match="must be an integer between"):
            SyntheticDataset(**options)
    (tmp_path / "Images").mkdir()
    (tmp_path / "Segmentations").mkdir()
    with pytest.raises(ConfigError, match="isic3: size"):
        Isic3Dataset(root=str(tmp_path), size=MAX_SIDE + 1)


def test_running_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import ambiseg.data

    for error in (MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 1 TB")):

        def build(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(ambiseg.data, "build", build)
        assert_one_line(*run_cli(["show", "--index", "0", "--out", str(tmp_path / "f.png")], capsys), "out of memory")
    monkeypatch.setattr(ambiseg.data, "build", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # other RuntimeErrors stay bugs, with their traceback
        main(["show", "--index", "0", "--out", str(tmp_path / "f.png")])


# ---- F. exceptions that were not mapped ----------------------------------------------------------
def test_an_encrypted_zip_entry_is_one_line(tmp_path, capsys):
    archive = zip_of(lidc_folder(tmp_path / "lidc"), tmp_path / "lidc.zip")
    patch_entry(archive, f"{NODULE}/mask-2/slice-0.png", flags=0x1)
    argv = ["show", "--data", "lidc", "--root", str(archive), "--index", "0", "--out", str(tmp_path / "f.png")]
    assert_one_line(*run_cli(argv, capsys), "mask-2/slice-0.png' is encrypted")


def test_a_deeply_nested_set_value_is_one_line(tmp_path, capsys):
    deep = "[" * 5000 + "]" * 5000
    argv = ["train", "det-unet", "--preset", "smoke", "--set", f"transport.widths={deep}", "--out", str(tmp_path)]
    assert_one_line(*run_cli(argv, capsys), f"nests brackets more than {MAX_SET_DEPTH} deep")
    flat = "[" * MAX_SET_DEPTH + "]" * MAX_SET_DEPTH
    assert parse_sets((f"a={flat}", 'b="[[[["', "c=" + "1" * 5000)) == {
        "a": eval(flat),
        "b": "[[[[",  # brackets inside a string are not nesting
        "c": "1" * 5000,  # beyond Python's 4,300-digit limit: the text, for the option's own check
    }


@pytest.mark.parametrize(
    "command",
    [
        "show --index 0 --out {tmp}/f.png",
        "train det-unet --preset smoke --out {tmp}/run",
        "eval {ckpt} --samples 2",
        "sample {ckpt} --samples 2 --out {tmp}/s",
    ],
)
@pytest.mark.parametrize("seed", ["1180591620717411303424", "-1", "4294967296", "x"])
def test_every_seed_option_is_range_checked(tmp_path, capsys, command, seed):
    method = ambiseg.build("det-unet", preset="smoke")
    save_checkpoint(tmp_path / "ok.safetensors", method, method.config, stage_index=1)
    argv = [*shlex.split(command.format(tmp=tmp_path, ckpt=tmp_path / "ok.safetensors")), "--seed", seed]
    assert_one_line(*run_cli(argv, capsys), "--seed must be")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.safetensors"]


# ---- G. the distributed environment --------------------------------------------------------------
LAUNCH = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not an integer"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is outside 1..1000000"),
        ({"WORLD_SIZE": "-2"}, "WORLD_SIZE=-2 is outside"),
        ({"RANK": None}, "RANK is not set"),
        ({"RANK": "5"}, "RANK=5 is outside 0..1"),
        ({"RANK": "-1"}, "RANK=-1 is outside 0..1"),
        ({"RANK": "1.0"}, "RANK='1.0' is not an integer"),
        ({"LOCAL_RANK": "abc"}, "LOCAL_RANK='abc' is not an integer"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK=2 is outside 0..1"),
        ({"MASTER_ADDR": None}, "MASTER_ADDR is not set"),
        ({"MASTER_ADDR": " "}, "MASTER_ADDR is not set"),
        ({"MASTER_PORT": None}, "MASTER_PORT is not set"),
        ({"MASTER_PORT": "abc"}, "MASTER_PORT='abc' is not an integer"),
        ({"MASTER_PORT": "0"}, "MASTER_PORT=0 is outside 1..65535"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is outside 1..65535"),
        ({"AMBISEG_DIST_TIMEOUT": "abc"}, "AMBISEG_DIST_TIMEOUT='abc' must be a number of seconds"),
        ({"AMBISEG_DIST_TIMEOUT": "0"}, "AMBISEG_DIST_TIMEOUT='0' must be"),
        ({"AMBISEG_DIST_TIMEOUT": "nan"}, "AMBISEG_DIST_TIMEOUT='nan' must be"),
        ({"AMBISEG_DIST_TIMEOUT": "inf"}, "AMBISEG_DIST_TIMEOUT='inf' must be"),
    ],
)
def test_launch_variables_are_checked_in_one_line(tmp_path, capsys, monkeypatch, changes, expected):
    for key, value in {**LAUNCH, **changes}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    assert_one_line(*run_cli(["train", "det-unet", "--preset", "smoke", "--out", str(out)], capsys), expected)
    assert not out.exists()


def test_a_single_process_ignores_stray_ranks(monkeypatch):
    for world in ("1", " ", ""):
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("RANK", "abc")
        assert distributed.launch_env() is None and distributed.setup() is False
    monkeypatch.delenv("WORLD_SIZE")
    assert distributed.launch_env() is None


def test_a_rank_whose_peers_never_come_fails_in_one_line_not_a_hang(tmp_path):
    """WORLD_SIZE=2 RANK=0 with no second process used to wait 30 minutes without a word."""
    env = {**ENV, **LAUNCH, "MASTER_PORT": str(free_port()), "AMBISEG_DIST_TIMEOUT": "3"}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ambiseg", "train", "det-unet", "--preset", "smoke", "--out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "waiting for the other ranks (giving up after 3 s" in lines[0], proc.stderr
    assert lines[-1].startswith("error: rank 0 of 2") and "could not meet within 3 s" in lines[-1], proc.stderr
    assert not out.exists()


def test_a_rank_without_rank_0_or_with_a_busy_port_fails_in_one_line(monkeypatch):
    for key, value in {**LAUNCH, "RANK": "1", "MASTER_PORT": str(free_port()), "AMBISEG_DIST_TIMEOUT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(AmbisegError, match="rank 0 never listened there") as info:
        distributed.setup(torch.device("cpu"))
    assert "\n" not in str(info.value)
    monkeypatch.setenv("MASTER_ADDR", "nohost.invalid")
    with pytest.raises(ConfigError, match="MASTER_ADDR='nohost.invalid' cannot be resolved"):
        distributed.setup(torch.device("cpu"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for key, value in {"RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(busy.getsockname()[1])}.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(AmbisegError, match="could not meet .*address already in use") as info:
            distributed.setup(torch.device("cpu"))
    assert "\n" not in str(info.value) and not distributed.is_distributed()


# ---- J. show --checkpoint checks what eval and sample check --------------------------------------
def test_show_refuses_a_checkpoint_of_another_size_and_non_finite_samples(tmp_path, capsys):
    method = ambiseg.build("det-unet", preset="smoke", image_size=32)
    save_checkpoint(tmp_path / "ok.safetensors", method, method.config, stage_index=1)
    with torch.no_grad():
        for parameter in method.parameters():
            parameter.mul_(1e30)
    save_checkpoint(tmp_path / "huge.safetensors", method, method.config, stage_index=1)
    show = ["show", "--index", "0", "--out", str(tmp_path / "f.png"), "--samples", "2", "--checkpoint"]
    code, err = run_cli([*show, str(tmp_path / "ok.safetensors"), "--set", "size=64"], capsys)
    assert_one_line(code, err, "was trained on 1-channel 32x32 images but synthetic train #0 has 1-channel 64x64")
    assert_one_line(*run_cli([*show, str(tmp_path / "huge.safetensors"), "--set", "size=32"], capsys), "non-finite")
    assert not (tmp_path / "f.png").exists()
    assert run_cli([*show, str(tmp_path / "ok.safetensors"), "--set", "size=32"], capsys)[0] == 0
    assert (tmp_path / "f.png").stat().st_size > 0


# ---- mixed bit depths ----------------------------------------------------------------------------
def test_a_16_bit_slice_among_8_bit_ones_is_refused(tmp_path):
    root = lidc_folder(tmp_path / "lidc")
    odd = root / "LIDC-IDRI-slices" / "LIDC-IDRI-0002" / "nodule-0" / "images" / "slice-0.png"
    Image.fromarray(np.full((16, 16), 100, np.uint16)).save(odd)  # 0..255 values in a 16-bit file
    data = LidcDataset(root=str(root), split="all")
    with pytest.raises(DataError, match=r"LIDC-IDRI-0002/nodule-0/images/slice-0.png: 16-bit image, but .* 8-bit"):
        data.verify()
    assert "LIDC-IDRI-0000" in str(pytest.raises(DataError, data.verify).value)  # names a file of the others


def test_pickles_mixing_8_and_16_bit_images_are_refused(tmp_path):
    import pickle

    masks = [np.zeros((4, 4), np.uint8)] * 2
    content = {
        "a": {"image": np.full((4, 4), 100, np.uint8), "masks": masks, "series_uid": "p0"},
        "b": {"image": np.full((4, 4), 100, np.uint16), "masks": masks, "series_uid": "p1"},
    }
    (tmp_path / "data.pickle").write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=r"\['b'\]\['image'\]: 16-bit image, but .* 8-bit \(e.g. .*\['a'\]"):
        LidcDataset(root=str(tmp_path), split="all")


# ---- more bad inputs of the same kind ------------------------------------------------------------
def odd_roots(tmp: Path) -> dict[str, Path]:
    """Damaged LIDC roots, one per case below."""
    roots: dict[str, Path] = {}
    folder = lidc_folder(tmp / "base")

    twice = tmp / "twice.zip"
    with zipfile.ZipFile(twice, "w") as zf:
        for path in sorted(folder.rglob("*.png")):
            zf.write(path, path.relative_to(folder).as_posix())
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.write(folder / NODULE / "images" / "slice-0.png", f"{NODULE}/images/slice-0.png")
    roots["twice"] = twice

    directory = lidc_folder(tmp / "dir")
    (directory / NODULE / "mask-0" / "slice-1.png").mkdir()
    png(directory / NODULE / "images" / "slice-1.png", np.zeros((16, 16)))
    for k in (1, 2, 3):
        png(directory / NODULE / f"mask-{k}" / "slice-1.png", np.zeros((16, 16)))
    roots["directory"] = directory

    loop = lidc_folder(tmp / "loop")
    target = loop / NODULE / "images" / "slice-0.png"
    target.unlink()
    target.symlink_to(target)
    roots["loop"] = loop

    roots["long_rater"] = zip_of(folder, tmp / "long.zip")
    with zipfile.ZipFile(roots["long_rater"], "a") as zf:  # int() refuses more than 4,300 digits
        zf.write(folder / NODULE / "mask-0" / "slice-0.png", f"{NODULE}/mask-{'1' * 5000}/slice-0.png")

    damaged = zip_of(folder, tmp / "damaged.zip")
    raw = damaged.read_bytes()
    at = raw.find(b"PK\x01\x02")
    damaged.write_bytes(raw[:at] + b"XX\x01\x02" + raw[at + 4 :])
    roots["damaged"] = damaged

    method_99 = zip_of(folder, tmp / "method99.zip")
    raw = bytearray(method_99.read_bytes())
    for signature, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        at = raw.find(signature)
        while at != -1:
            raw[at + method_at : at + method_at + 2] = (99).to_bytes(2, "little")
            at = raw.find(signature, at + 1)
    method_99.write_bytes(bytes(raw))
    roots["method_99"] = method_99

    newline = tmp / "newline.zip"
    zip_of(folder, newline)
    with zipfile.ZipFile(newline, "a") as zf:
        zf.writestr("LIDC-IDRI-slices/p\nx/nodule-0/mask-0/slice-0.png", b"")
    roots["newline"] = newline
    return roots


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    return odd_roots(tmp_path_factory.mktemp("odd"))


ODD = [
    ("zip holding one entry twice", "show --data lidc --root {twice} --index 0", "is there twice"),
    ("a folder named like a PNG", "show --data lidc --root {directory} --index 1 --split all", "not a regular file"),
    ("a PNG linking to itself", "show --data lidc --root {loop} --index 0 --split all", "cannot be read"),
    ("rater number of 5000 digits", "show --data lidc --root {long_rater} --index 0", "rater number too long"),
    ("zip directory damaged", "show --data lidc --root {damaged} --index 0", "directory is damaged"),
    ("unknown compression method", "show --data lidc --root {method_99} --index 0", "method is not supported"),
    ("entry name holding a newline", "show --data lidc --root {newline} --index 0", "p\\nx"),
    ("negative split seed", "show --data lidc --root {directory} --index 0 --set data.seed=-1", "data.seed must be"),
    (
        "NaN fraction",
        "show --data lidc --root {directory} --index 0 --set fractions=[NaN,0.5,0.5]",
        "fractions must be three",
    ),
    ("5000-digit size", "show --index 0 --set size=" + "1" * 5000, "cannot read"),
    ("10**12 generated images", "show --index 0 --set sizes=[1000000000000,1,1]", "each of sizes"),
    ("10**10 annotators", "show --index 0 --set num_annotators=10000000000", "num_annotators must be"),
    ("show --samples beyond the limit", "show --index 0 --samples 10001", "10001 is not in the range"),
    ("17-deep --set on show", "show --index 0 --set size=" + "[" * 17 + "]" * 17, "more than 16 deep"),
]


@pytest.mark.parametrize("name, command, expected", ODD, ids=[c[0] for c in ODD])
def test_odd_input_is_one_line(roots, tmp_path, capsys, name, command, expected):
    argv = [*shlex.split(command.format(**roots)), "--out", str(tmp_path / "f.png")]
    assert_one_line(*run_cli(argv, capsys), expected)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_endless_file_named_like_a_png_is_refused_not_read(tmp_path, kind):
    root = lidc_folder(tmp_path / "lidc")
    image = root / NODULE / "images" / "slice-0.png"
    image.unlink()
    if kind == "fifo":
        os.mkfifo(image)
    else:
        image.symlink_to("/dev/zero")
    code = f"from ambiseg.data.lidc import LidcDataset; LidcDataset(root={str(root)!r}, split='all').verify()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 1 and "not a regular file" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_an_isic_mask_that_is_a_fifo_is_refused_not_opened(tmp_path):
    for folder in ("Images", "Segmentations"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "Images" / "a.png")
    for letter in "fm":
        png(tmp_path / "Segmentations" / f"a_{letter}.png", np.zeros((20, 20)))
    os.mkfifo(tmp_path / "Segmentations" / "a_p.png")  # decoding it would block forever
    argv = ["show", "--data", "isic3", "--root", str(tmp_path), "--split", "all", "--index", "0"]
    command = [sys.executable, "-m", "ambiseg", *argv, "--out", str(tmp_path / "f.png")]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)  # a hang fails here
    assert_one_line(proc.returncode, proc.stderr.strip(), "a_p.png: not a regular file")


@pytest.mark.parametrize("variable", ["AMBISEG_LIDC", "AMBISEG_ISIC3"])
@pytest.mark.parametrize("value", ["", "{tmp}/nowhere", "{tmp}/file.txt", "{tmp}/fifo"])
def test_dataset_root_variables_are_checked(tmp_path, capsys, monkeypatch, variable, value):
    (tmp_path / "file.txt").write_text("not data")
    os.mkfifo(tmp_path / "fifo")
    monkeypatch.setenv(variable, value.format(tmp=tmp_path))
    name = "lidc" if variable == "AMBISEG_LIDC" else "isic3"
    code, err = run_cli(["show", "--data", name, "--index", "0", "--out", str(tmp_path / "f.png")], capsys)
    assert_one_line(code, err, "")
    assert not (tmp_path / "f.png").exists()
