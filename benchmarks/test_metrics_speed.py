"""`evaluate` at S = 100, A = 4, 128 x 128, B = 8 on CPU: vectorised vs the naive per-pair loop.

Run: `python -m pytest benchmarks/test_metrics_speed.py -s -p no:cacheprovider`. Both runs sit
in one benchmark group; the naive one prints the ratio of medians and stores it as
`extra_info["speedup"]`. The naive reference lives in tests/metrics_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambiseg.metrics import evaluate
from tests import metrics_reference as naive

B, S, A, SIZE = 8, 100, 4, 128
COUNTS = (16, 32, 100)
_MEDIANS: dict[str, float] = {}


def blobs(count: int, generator: torch.Generator) -> torch.Tensor:
    """`[B, count, SIZE, SIZE]` bool discs with jittered centres and radii; about 1 in 10 empty."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = SIZE / 2 + 8 * torch.randn(B, count, 2, 1, 1, generator=generator)
    radius = 6 + 20 * torch.rand(B, count, 1, 1, generator=generator)
    radius = torch.where(torch.rand(B, count, 1, 1, generator=generator) < 0.1, torch.zeros_like(radius), radius)
    return (yy - centre[:, :, 0]) ** 2 + (xx - centre[:, :, 1]) ** 2 < radius**2


@pytest.fixture(scope="module")
def masks() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return blobs(S, g), blobs(A, g)


@pytest.fixture(autouse=True)
def one_thread():
    """Both sides on one core: the naive loop is single-threaded numpy, and one thread keeps
    the timing stable on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.benchmark(group="metrics-evaluate")
def test_evaluate_vectorised(benchmark, masks):
    result = benchmark.pedantic(evaluate, args=masks, kwargs={"counts": COUNTS}, rounds=10, warmup_rounds=1)
    if benchmark.stats is not None:
        _MEDIANS["vectorised"] = benchmark.stats.stats.median
    assert set(result) >= {"GED16", "GED32", "GED100", "HM-IoU32", "MDM32", "CI32", "NCC32", "Dice"}


@pytest.mark.benchmark(group="metrics-evaluate")
def test_evaluate_naive_loop(benchmark, masks, capsys):
    slow = benchmark.pedantic(naive.evaluate, args=masks, kwargs={"counts": COUNTS}, rounds=2, iterations=1)
    fast = evaluate(*masks, counts=COUNTS)
    assert list(fast) == list(slow)
    assert all(np.allclose(fast[k].numpy(), slow[k], atol=1e-5, equal_nan=True) for k in fast), (
        "naive and vectorised disagree"
    )
    if benchmark.stats is None:  # --benchmark-disable: nothing was timed
        return
    median = benchmark.stats.stats.median
    if "vectorised" in _MEDIANS:
        ratio = median / _MEDIANS["vectorised"]
        benchmark.extra_info["speedup"] = round(ratio, 1)
        with capsys.disabled():
            print(
                f"\nevaluate B={B} S={S} A={A} {SIZE}x{SIZE} on CPU ({torch.get_num_threads()} threads): "
                f"vectorised {_MEDIANS['vectorised'] * 1e3:.1f} ms, naive {median:.2f} s -> {ratio:.0f}x faster"
            )
