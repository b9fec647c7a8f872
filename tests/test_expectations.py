"""The bench header's expectations: measured times summed over methods and seeds, and the
shared-cores warning."""

from __future__ import annotations

import json

from ambiseg.expectations import expectation_lines, load_measured

TABLE = {
    "machine": "AMD EPYC, 2 cores, otherwise idle",
    "threads": 2,
    "commit": "0123456789abcdef",
    "command": "ambiseg bench --methods atfm,phiseg",
    "times": {"synthetic/cpu": {"atfm": 120.0, "phiseg": 150.0, "det-unet": 30.0}},
}


def test_the_estimate_sums_the_measured_methods_and_names_the_unmeasured():
    lines = expectation_lines(
        "synthetic", "cpu", ["det-unet", "atfm", "cimd"], seeds=2, threads=1, cpus=2, load=0.1, table=TABLE
    )
    assert lines == [
        "expected wall time: about 5 min for det-unet, atfm x 2 seed(s), as measured on AMD EPYC, 2 cores, "
        "otherwise idle (2 threads, ambiseg 0123456789); not measured: cimd"
    ]
    assert expectation_lines("lidc", "cpu", ["atfm"], seeds=1, threads=1, cpus=2, load=None, table=TABLE) == []


def test_a_busy_machine_is_named_and_more_threads_than_one_get_a_hint():
    one, two = (
        expectation_lines("lidc", "cpu", ["atfm"], seeds=1, threads=t, cpus=2, load=3.2, table=TABLE) for t in (1, 2)
    )
    assert one == [
        "load average 3.2 on 2 CPU(s): other jobs share the cores, so expect longer "
        "(a 1-minute average: a job that ended in the last minutes still counts)"
    ]
    assert two[0].startswith(one[0]) and two[0].endswith("consider --threads 1")


def test_a_missing_or_damaged_table_gives_no_estimate(tmp_path):
    assert load_measured(tmp_path / "none.json") == {}
    (tmp_path / "bad.json").write_text("{not json")
    assert load_measured(tmp_path / "bad.json") == {}
    (tmp_path / "ok.json").write_text(json.dumps(TABLE))
    assert load_measured(tmp_path / "ok.json")["times"]["synthetic/cpu"]["atfm"] == 120.0
