r"""Training throughput on the CPU: one optimiser step of every stage of every registered recipe with
a `cpu-lidc` preset, against the fp32 matmul rate measured in the same run.

Run (one thread: the two dev cores are shared with other jobs; docs/training-speed.md has the numbers):

    OMP_NUM_THREADS=1 python -m pytest benchmarks/test_training_speed.py -s -p no:cacheprovider
    OMP_NUM_THREADS=1 python benchmarks/test_training_speed.py \
        --out benchmarks/results/cpu-throughput/training-speed.json
    OMP_NUM_THREADS=1 python benchmarks/test_training_speed.py --compare channels_last --out ab-channels-last.json

- `test_training_step[recipe-stage-layout]`: one step of the `Trainer` (its own `_step`:
  `Method.loss(batch, stage)`, backward, optimiser step, on a batch collated from dataset items) at
  the preset's batch size, on random 64 x 64 one-channel images with 4 binary annotator masks (the
  speed does not depend on the values), contiguous and channels-last (`Trainer(channels_last=True)`).
  `extra_info`: samples/s (images per second, median of the rounds), GFLOP/s achieved (the FLOPs
  of the forward and backward counted by `FlopCounterMode` over one step) and `of_matmul`, their
  ratio to the rate of a 2048^3 fp32 matmul timed in the same run (`test_throughput.py`'s measure).
- Script mode writes the same numbers as one JSON (`--out`); `--compare channels_last|compile|threads`
  instead times A (contiguous, eager, 1 thread) and B (the candidate) in alternating rounds in one
  process, so drifting load from other jobs hits both alike, and reports the medians, their ratio
  and how far B's first-step loss and gradients lie from A's (same weights, batch and seed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

import ambiseg
from ambiseg.registry import methods
from ambiseg.train import Trainer, _StageLoss, make_optimizer

PRESET, SIZE, ANNOTATORS = "cpu-lidc", 64, 4
MATMUL_N = 2048
LAYOUTS = ("contiguous", "channels_last")
ROUNDS = int(os.environ.get("AMBISEG_BENCH_ROUNDS") or 3)


def training_cases() -> list[tuple[str, str]]:
    """(recipe, stage) for every stage of every registered recipe that has a `cpu-lidc` preset."""
    cases = []
    for name in methods.names():
        recipe = methods.get(name).info.get("recipe")
        if recipe is not None and PRESET in recipe.presets:
            stages = ambiseg.build(name, preset=PRESET, image_size=SIZE).stages
            cases += [(name, stage) for stage in stages]
    return cases


CASES = training_cases()


@dataclasses.dataclass
class TrainStep:
    """One stage of one recipe, set up as `Trainer._fit_stage` sets it up; calling it runs one step."""

    recipe: str
    stage: str
    batch_size: int
    trainer: Trainer
    loss_fn: torch.nn.Module  # the stage's loss, or its torch.compile wrapper (an OptimizedModule)
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    threads: int
    steps: int = 0

    def __call__(self) -> float:
        """One optimiser step on the whole (random) training set, one batch; returns the loss."""
        torch.set_num_threads(self.threads)
        clip = self.trainer.method.train_config[self.stage].get("grad_clip")
        everything = list(range(self.batch_size))
        loss = self.trainer._step(
            self.loss_fn, self.optimizer, self.params, everything, 1, clip, self.stage, 0, self.steps
        )
        self.steps += 1
        return loss

    def gradient(self) -> Tensor:
        """The gradients the last step left, flattened into one vector (zeros for unused parameters)."""
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in self.params])


def make_step(
    recipe: str, stage: str, *, channels_last: bool = False, compiled: bool = False, threads: int | None = None
) -> TrainStep:
    """`recipe`'s `cpu-lidc` method with seed-0 weights, its `stage` optimiser and a random batch.

    `compiled`: `torch.compile` of the stage loss (forward and backward), with torch's eager random
    numbers (`fallback_random`) so its draws match the eager step's.
    """
    torch.manual_seed(0)
    method = ambiseg.build(recipe, preset=PRESET, image_size=SIZE)
    cfg = method.train_config[stage]
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "image": torch.rand(1, SIZE, SIZE, generator=g),
            "masks": (torch.rand(ANNOTATORS, SIZE, SIZE, generator=g) < 0.5).to(torch.uint8),
        }
        for _ in range(int(cfg["batch_size"]))
    ]
    trainer = Trainer(method, items, progress=False, channels_last=channels_last)
    if channels_last:
        method.to(memory_format=torch.channels_last)  # what Trainer.fit does for the whole training
    params = method.begin_stage(stage)
    loss_fn: torch.nn.Module = _StageLoss(method, stage)
    if compiled:
        from torch._inductor import config as inductor_config

        inductor_config.fallback_random = True
        torch._dynamo.reset()  # a fresh compilation per case: a recompile would make the batch dynamic
        loss_fn = cast(torch.nn.Module, torch.compile(loss_fn, dynamic=False))
    threads = threads or torch.get_num_threads()
    return TrainStep(recipe, stage, len(items), trainer, loss_fn, make_optimizer(cfg, params), params, threads)


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_gflops(rounds: int = 5) -> float:
    """GFLOP/s of a 2048^3 fp32 matmul on the current threads: best of `rounds` after 2 warm-ups."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, generator=g) for _ in range(2))
    for _ in range(2):
        a @ b
    return 2 * MATMUL_N**3 / min(_seconds(lambda: a @ b) for _ in range(rounds)) / 1e9


def step_flops(step: TrainStep) -> float:
    """FLOPs of one step's forward and backward (matmuls, convolutions, attention; one step is run)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def summary(step: TrainStep, seconds: float, flops: float, matmul: float) -> dict[str, Any]:
    """The numbers of one timed step: samples/s, GFLOP/s and its share of the matmul rate."""
    gflops = flops / seconds / 1e9
    return {
        "recipe": step.recipe,
        "stage": step.stage,
        "batch_size": step.batch_size,
        "seconds": seconds,
        "samples_per_s": step.batch_size / seconds,
        "gflop_per_step": flops / 1e9,
        "gflops": gflops,
        "of_matmul": gflops / matmul,
        "threads": step.threads,
    }


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['recipe']}:{row['stage']} {row.get('layout', '')} batch {row['batch_size']}: "
        f"{row['samples_per_s']:.1f} samples/s, {row['gflops']:.1f} GFLOP/s = {row['of_matmul']:.0%} of the matmul rate"
    )


# ---- pytest-benchmark ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def matmul_rate() -> float:
    rate = matmul_gflops()
    print(f"\nmatmul fp32 {MATMUL_N}^3, {torch.get_num_threads()} thread(s): {rate:.0f} GFLOP/s")
    return rate


@pytest.mark.benchmark(group="training-step")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("recipe", "stage"), CASES, ids=[f"{r}-{s}" for r, s in CASES])
def test_training_step(benchmark, matmul_rate, recipe, stage, layout):
    step = make_step(recipe, stage, channels_last=layout == "channels_last")
    flops = step_flops(step)  # also the first, warm-up step
    loss = benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    assert math.isfinite(loss)
    if benchmark.stats is not None:
        row = {**summary(step, benchmark.stats.stats.median, flops, matmul_rate), "layout": layout}
        benchmark.extra_info.update({**row, "matmul_gflops": matmul_rate, "device": "cpu"})
        print(f"\n{_line(row)}")


# ---- script mode: one JSON, or an interleaved A/B comparison ------------------------------------
CANDIDATES: dict[str, dict[str, Any]] = {
    "channels_last": {"channels_last": True},
    "compile": {"compiled": True},
    "threads": {"threads": 2},
}


def measure(cases: Sequence[tuple[str, str]], *, rounds: int, matmul: float) -> list[dict[str, Any]]:
    """Every case in both layouts: one counted step, one warm-up, then the median of `rounds` steps."""
    rows = []
    for recipe, stage in cases:
        for layout in LAYOUTS:
            step = make_step(recipe, stage, channels_last=layout == "channels_last")
            flops = step_flops(step)
            step()
            seconds = statistics.median(_seconds(step) for _ in range(rounds))
            rows.append({**summary(step, seconds, flops, matmul), "layout": layout})
            print(_line(rows[-1]), flush=True)
    return rows


def compare(recipe: str, stage: str, candidate: str, *, rounds: int, matmul: float) -> dict[str, Any]:
    """A (contiguous, eager, 1 thread) against B = `candidate`, rounds alternating ABBA..., medians."""
    a = make_step(recipe, stage, threads=1)
    b = make_step(recipe, stage, **{"threads": 1, **CANDIDATES[candidate]})
    torch.manual_seed(0)
    loss_a = a()
    torch.manual_seed(0)
    first_b = time.perf_counter()
    loss_b = b()  # with `compile`, the compilation
    first_b = time.perf_counter() - first_b
    grad_a, grad_b = a.gradient(), b.gradient()
    flops = step_flops(a)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(rounds):
        for key in ("a", "b") if r % 2 == 0 else ("b", "a"):
            torch.manual_seed(r)  # the same draws (annotators, t, noise) for A and B
            times[key].append(_seconds(a if key == "a" else b))
    seconds_a, seconds_b = statistics.median(times["a"]), statistics.median(times["b"])
    row: dict[str, Any] = {
        "recipe": recipe,
        "stage": stage,
        "candidate": candidate,
        "batch_size": a.batch_size,
        "rounds": rounds,
        "a": summary(a, seconds_a, flops, matmul),
        "b": summary(b, seconds_b, flops, matmul),
        "speedup": seconds_a / seconds_b,
        "speedup_pairs": statistics.median(x / y for x, y in zip(times["a"], times["b"], strict=True)),
        "b_first_step_s": first_b,
        "loss_rel_diff": abs(loss_a - loss_b) / max(abs(loss_a), 1e-12),
        "grad_rel_diff": float((grad_a - grad_b).norm() / grad_a.norm().clamp_min(1e-30)),
        "grad_max_abs_diff": float((grad_a - grad_b).abs().max()),
        "load_after": os.getloadavg(),
    }
    print(
        f"{recipe}:{stage} {candidate}: A {a.batch_size / seconds_a:.1f}, B {b.batch_size / seconds_b:.1f} "
        f"samples/s, x{row['speedup']:.2f} (pairs x{row['speedup_pairs']:.2f}); B's first step "
        f"{first_b:.1f} s; loss rel diff {row['loss_rel_diff']:.1e}, grad rel diff {row['grad_rel_diff']:.1e}; "
        f"load {row['load_after'][0]:.1f}",
        flush=True,
    )
    return row


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the rows and the machine as JSON here")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per case (and per side in --compare)")
    parser.add_argument("--recipes", help="comma-separated recipes (default: every one with a cpu-lidc preset)")
    parser.add_argument("--stages", help="comma-separated recipe:stage cases (overrides --recipes)")
    parser.add_argument("--compare", choices=list(CANDIDATES), help="time this candidate A/B against the default")
    args = parser.parse_args(argv)
    cases = CASES
    if args.stages:
        cases = [(recipe, stage) for recipe, _, stage in (c.partition(":") for c in args.stages.split(","))]
    elif args.recipes:
        cases = [c for c in CASES if c[0] in args.recipes.split(",")]
    before = machine()
    matmul = matmul_gflops()
    print(f"matmul fp32 {MATMUL_N}^3: {matmul:.0f} GFLOP/s; load {before['load'][0]:.1f}", flush=True)
    if args.compare:
        rows = [compare(r, s, args.compare, rounds=args.rounds, matmul=matmul) for r, s in cases]
    else:
        rows = measure(cases, rounds=args.rounds, matmul=matmul)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": before,
        "matmul_gflops": matmul,
        "matmul_gflops_after": matmul_gflops(),
        "load_after": os.getloadavg(),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
