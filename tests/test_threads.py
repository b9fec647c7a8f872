"""The thread policy (ambiseg.threads): --threads, else OMP_NUM_THREADS, else the CPUs of the
process (affinity, capped by the cgroup quota); the CLI applies it, prints it and records it."""

from __future__ import annotations

import shlex

import pytest
import torch

from ambiseg import threads
from ambiseg.cli import main
from ambiseg.errors import ConfigError
from ambiseg.results import check_record, environment
from ambiseg.threads import available_cpus, choose_threads, cpu_quota, using_threads


def cgroup(tmp_path, *, v2: str | None = None, v1: tuple[str, str] | None = None):
    """A fake cgroup root: `cpu.max` holding `v2`, or v1's quota and period files."""
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return tmp_path


@pytest.mark.parametrize(
    "v2, v1, quota",
    [
        ("150000 100000", None, 1.5),
        ("max 100000", None, None),
        (None, ("200000", "100000"), 2.0),
        (None, ("-1", "100000"), None),
        (None, None, None),
    ],
)
def test_the_cpu_quota_is_read_from_cgroup_v2_or_v1(tmp_path, v2, v1, quota):
    assert cpu_quota(cgroup(tmp_path, v2=v2, v1=v1)) == quota


@pytest.fixture
def eight_cpus(monkeypatch):
    """The process may run on 8 CPUs, whatever this machine has."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize("v2, cpus", [("max 100000", 8), ("250000 100000", 2), ("50000 100000", 1)])
def test_the_default_is_the_affinity_capped_by_the_quota_rounded_down(tmp_path, eight_cpus, v2, cpus):
    root = cgroup(tmp_path, v2=v2)
    assert available_cpus(root) == cpus
    assert choose_threads(environ={}, root=root) == cpus


def test_the_option_wins_over_the_variable_and_the_variable_over_the_quota(tmp_path, eight_cpus):
    root = cgroup(tmp_path, v2="100000 100000")
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "2"}, root=root) == 3
    assert choose_threads(environ={"OMP_NUM_THREADS": "4"}, root=root) == 4  # set by hand: respected
    assert choose_threads(environ={"OMP_NUM_THREADS": "6,2"}, root=root) == 6  # OpenMP's per-level list
    assert choose_threads(environ={"OMP_NUM_THREADS": " "}, root=root) == 1  # empty: unset


@pytest.mark.parametrize("requested, value", [(0, None), (-2, None), (None, "abc"), (None, "0")])
def test_a_count_below_one_is_refused(requested, value):
    environ = {} if value is None else {"OMP_NUM_THREADS": value}
    with pytest.raises(ConfigError, match="--threads must be a positive" if value is None else "OMP_NUM_THREADS is"):
        choose_threads(requested, environ=environ)


def test_using_threads_sets_the_count_for_the_block_only():
    before = torch.get_num_threads()
    with using_threads(3):
        assert torch.get_num_threads() == 3 and environment(torch.device("cpu"))["threads"] == 3
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "command",
    [
        "train det-unet --preset smoke --threads 0 --out {tmp}/run",
        "bench --methods det-unet --preset smoke --threads -2 --out {tmp}/run",
        "eval {tmp}/none.safetensors --threads 0 --out {tmp}/run/eval.json",
        "sample {tmp}/none.safetensors --threads 0 --out {tmp}/run",
        "show --index 0 --threads -1 --out {tmp}/run/item.png",
    ],
    ids=["train", "bench", "eval", "sample", "show"],
)
def test_the_cli_refuses_a_thread_count_below_one_in_one_line(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(shlex.split(command.format(tmp=tmp_path)))
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: --threads must be a positive integer, got ")
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_the_cli_refuses_a_bad_omp_num_threads_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(SystemExit) as info:
        main(["train", "det-unet", "--preset", "smoke", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "OMP_NUM_THREADS is 'many'" in err


def test_train_prints_the_thread_count_and_gives_the_count_back(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "det-unet", "--preset", "smoke", "--out", str(tmp_path), "--no-progress", "--threads", "2"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "device cpu, threads 2)" in out
    assert torch.get_num_threads() == 1  # the session's (conftest), back after the command


def test_a_record_without_threads_is_read_and_a_mistyped_count_is_refused():
    from ambiseg.errors import AmbisegError

    record = {
        "method": "det-unet",
        "dataset": "synthetic",
        "preset": "smoke",
        "seed": 0,
        "created": "2026-01-01T00:00:00+00:00",
        "per_image": {"GED4": [0.5]},
        "timing": {"train_s": 1.0, "sample_s_per_image": 0.1, "samples_per_image": 4},
        "params": 10,
        "env": {"device": "cpu"},
    }
    check_record(record, "old.json")  # written before threads were recorded
    check_record({**record, "env": {"device": "cpu", "threads": 2}}, "new.json")
    with pytest.raises(AmbisegError, match=r"field 'env.threads' is \"2\", not int"):
        check_record({**record, "env": {"device": "cpu", "threads": "2"}}, "bad.json")
