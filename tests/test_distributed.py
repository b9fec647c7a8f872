"""Two CPU processes with gloo through torchrun: same weights on both ranks, distributed
evaluation identical to a one-process evaluation, rank-0-only writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from safetensors.torch import load_file

import ambiseg
from ambiseg import data
from ambiseg.checkpoint import load_method
from ambiseg.evaluation import evaluate_method

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import save_file
    import ambiseg
    from ambiseg import data, distributed as dist
    from ambiseg.evaluation import evaluate_method
    from ambiseg.runtime import seed_everything
    from ambiseg.train import Trainer

    out = sys.argv[1]
    with dist.distributed_run(torch.device("cpu")) as dev:
        seed_everything(0)
        train_options = {"transport": {"steps": 4, "batch_size": 4, "accumulate": 2}}
        method = ambiseg.build("det-unet", preset="smoke", train=train_options)
        train = data.build("synthetic", split="train", size=32, sizes=(8, 2, 5))
        test = data.build("synthetic", split="test", size=32, sizes=(8, 2, 5))
        Trainer(method, train, None, seed=0, progress=False).fit()
        save_file({k: v.contiguous() for k, v in method.state_dict().items()}, f"{out}/rank{dist.rank()}.safetensors")
        result = evaluate_method(method, test, counts=(4, 8), seed=0, device=dev, warmup=False)
        if dist.is_main():
            json.dump({"world": dist.world_size(), "per_image": result["per_image"]}, open(f"{out}/metrics.json", "w"))
""")


def assert_same_per_image(mine: dict, stored: dict) -> None:
    """Equal per-image metrics, NaN (a metric undefined on an image; JSON null in a record) equal to NaN."""
    assert mine.keys() == stored.keys()
    for key, values in mine.items():
        as_array = [np.asarray([np.nan if v is None else v for v in x], dtype=float) for x in (values, stored[key])]
        np.testing.assert_array_equal(*as_array, err_msg=key)


def torchrun(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_two_gloo_ranks_agree_and_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SCRIPT)
    torchrun(str(script), str(tmp_path))
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["world"] == 2

    method = ambiseg.build("det-unet", preset="smoke")
    method.load_state_dict(rank0)
    test = data.build("synthetic", split="test", size=32, sizes=(8, 2, 5))
    single = evaluate_method(method, test, counts=(4, 8), seed=0, device=torch.device("cpu"), warmup=False)
    assert_same_per_image(single["per_image"], saved["per_image"])  # 5 images over 2 ranks, gathered in order


def test_torchrun_bench_writes_once_and_evaluates_like_one_process(tmp_path):
    out = tmp_path / "bench"
    torchrun(
        "-m",
        "ambiseg",
        "bench",
        "--methods",
        "det-unet",
        "--preset",
        "smoke",
        "--no-baseline",
        "--samples",
        "4,8",
        "--no-progress",
        "--out",
        str(out),
    )
    records = list((out / "results").glob("det-unet-*.json"))
    assert len(records) == 1  # rank 0 only
    assert len(list((out / "results").glob("reference-*.json"))) == 1
    record = json.loads(records[0].read_text())
    method, _ = load_method(out / "runs" / "det-unet-synthetic-smoke-seed0" / "last.safetensors")
    test = data.build("synthetic", split="test", size=32, sizes=(16, 4, 4), seed=0)
    single = evaluate_method(method, test, counts=(4, 8), seed=0, device=torch.device("cpu"))
    assert_same_per_image(single["per_image"], record["per_image"])
    assert (out / "leaderboard.md").exists()


STOPPING = textwrap.dedent("""
    import os, sys
    import torch
    import ambiseg
    from ambiseg import data, distributed as dist
    from ambiseg.runtime import seed_everything
    from ambiseg.train import Trainer

    with dist.distributed_run(torch.device("cpu")) as dev:
        seed_everything(0)
        method = ambiseg.build("det-unet", preset="smoke", train={"transport": {"steps": 6, "batch_size": 4}})
        original, calls = method.loss, [0]

        def stopping(batch, stage):
            calls[0] += 1
            if calls[0] == 4:  # both ranks die during step 4, after the checkpoint of step 3
                os._exit(3)
            return original(batch, stage)

        method.loss = stopping
        train = data.build("synthetic", split="train", size=32, sizes=(8, 2, 5))
        Trainer(method, train, None, out_dir=sys.argv[1], seed=0, progress=False, save_every=1).fit()
""")


def test_a_two_rank_run_resumes_in_one_process(tmp_path):
    from ambiseg.checkpoint import load_checkpoint
    from ambiseg.train import Trainer

    script = tmp_path / "stopping.py"
    script.write_text(STOPPING)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        str(tmp_path),
    ]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env).returncode != 0
    assert load_checkpoint(tmp_path / "last.safetensors").meta["step"] == 3

    method = ambiseg.build("det-unet", preset="smoke", train={"transport": {"steps": 6, "batch_size": 4}})
    train = data.build("synthetic", split="train", size=32, sizes=(8, 2, 5))
    result = Trainer(method, train, None, out_dir=tmp_path, seed=0, progress=False).fit(resume=True)
    assert result.steps == {"transport": 6}
    done = load_checkpoint(tmp_path / "last.safetensors")
    assert done.meta["stage_index"] == 1
    assert [h["step"] for h in done.meta["history"]] == [2, 4, 6]  # epochs of 2 steps, the first from 2 ranks
