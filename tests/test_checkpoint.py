"""Checkpoints: round trip without pickle, atomic writes, refusal of foreign or mismatched files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import ambiseg
from ambiseg.checkpoint import load_checkpoint, load_method, load_weights, optimizer_state, save_checkpoint
from ambiseg.errors import AmbisegError


@pytest.fixture()
def method():
    torch.manual_seed(0)
    return ambiseg.build("det-unet", preset="smoke")


def test_round_trip_weights_optimizer_and_rng(tmp_path, method):
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    method.loss({"image": torch.rand(2, 1, 16, 16), "masks": torch.ones(2, 3, 16, 16)}, "transport")["loss"].backward()
    opt.step()
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "c.safetensors", method, method.config, optimizer=opt, stage="transport", step=7)
    expected_next = torch.rand(3)
    ckpt = load_checkpoint(tmp_path / "c.safetensors", method="det-unet")
    assert ckpt.meta["step"] == 7 and ckpt.config == method.config
    rebuilt, _ = load_method(tmp_path / "c.safetensors")
    for (k, a), (_, b) in zip(method.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    state = optimizer_state(ckpt)
    opt2 = torch.optim.Adam(rebuilt.parameters(), lr=1e-3)
    opt2.load_state_dict(state)
    first = next(iter(opt.state.values()))
    assert torch.equal(next(iter(opt2.state.values()))["exp_avg"], first["exp_avg"])
    from ambiseg.checkpoint import restore_rng

    restore_rng(ckpt.rng, ckpt.meta["rng"])
    assert torch.equal(torch.rand(3), expected_next)


def test_crash_mid_write_keeps_the_old_file(tmp_path, method, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, method, method.config, step=1)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("ambiseg.checkpoint.save_file", broken)
    with pytest.raises(AmbisegError, match=f"cannot write {path}: disk full; the previous file is kept"):
        save_checkpoint(path, method, method.config, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left behind


def test_truncated_checkpoint_is_refused(tmp_path, method):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, method, method.config)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AmbisegError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_foreign_and_mismatched_checkpoints_are_refused(tmp_path, method):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(AmbisegError, match="not an ambiseg checkpoint"):
        load_checkpoint(plain)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, method, method.config)
    with pytest.raises(AmbisegError, match="is of method 'det-unet', not 'atfm'"):
        load_checkpoint(path, method="atfm")
    wider = ambiseg.build("det-unet", preset="smoke", transport={"widths": [8, 32]})
    with pytest.raises(AmbisegError, match="does not fit this method's configuration: .* has shape"):
        load_weights(wider, load_checkpoint(path))


def test_other_major_version_is_refused(tmp_path, method):
    path = tmp_path / "c.safetensors"
    tensors = {f"model/{k}": v.contiguous() for k, v in method.state_dict().items()}
    meta = {"format": 1, "ambiseg_version": "99.0.0", "method": "det-unet", "config": method.config}
    save_file(tensors, str(path), metadata={"ambiseg": json.dumps(meta)})
    with pytest.raises(AmbisegError, match="ambiseg 99.0.0.*major versions differ"):
        load_checkpoint(path)


def test_a_pickle_named_like_a_checkpoint_executes_nothing(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(AmbisegError, match="not a readable safetensors file"):
        load_checkpoint(path)
    assert not marker.exists()


def test_written_files_get_the_usual_permissions(tmp_path, method):
    import os
    import stat

    save_checkpoint(tmp_path / "c.safetensors", method, method.config)
    mode = stat.S_IMODE(os.stat(tmp_path / "c.safetensors").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
