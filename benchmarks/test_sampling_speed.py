"""Sampling time per method at equal widths: ATFM (GTR + 25 Euler steps of the ST-Net) versus
the CIMD-style diffusion model (the same time-conditioned U-Net, DDPM over T steps, and DDIM),
on the same input size and sample count.

Run: `python -m pytest benchmarks/test_sampling_speed.py -s -p no:cacheprovider`.
The flow/diffusion nets share one width so the comparison is about the number of network
evaluations and the per-image work, not about model size. The CIMD test prints its time over
ATFM's (`extra_info["vs_atfm"]`); docs/leaderboard.md lists the measured ratios.
"""

from __future__ import annotations

import pytest
import torch

import ambiseg

SIZE, SAMPLES, WIDTH, MULTS = 32, 16, 32, [1, 2, 4]
NET = {"width": WIDTH, "mults": MULTS}
GTR = {"widths": [16, 32, 64], "features": 16, "rank": 10}
METHODS = {
    "atfm-euler25": dict(name="atfm", prior=GTR, transport=NET, sampler={"name": "euler", "steps": 25}),
    "cimd-ddpm100": dict(name="cimd", transport={**NET, "steps": 100}, sampler={"name": "ddpm"}),
    "cimd-ddim25": dict(name="cimd", transport={**NET, "steps": 1000}, sampler={"name": "ddim", "steps": 25}),
    "tdpm-ddim25": dict(name="tdpm", prior=GTR, transport=NET, sampler={"name": "ddim", "steps": 25}),
    "act-gtr": dict(name="act-gtr", prior=GTR),
    "probunet": dict(name="probunet", preset="cpu"),
    "phiseg": dict(name="phiseg", preset="cpu"),
}
_MEANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.benchmark(group="sampling")
@pytest.mark.parametrize("label", list(METHODS))
def test_sampling_time(benchmark, image, label):
    spec = dict(METHODS[label])
    torch.manual_seed(0)
    method = ambiseg.build(spec.pop("name"), image_size=SIZE, **spec).eval()

    def draw() -> torch.Tensor:
        return method.sample(image, SAMPLES, generator=torch.Generator().manual_seed(1))

    out = benchmark.pedantic(draw, rounds=3, warmup_rounds=1)
    assert out.shape == (1, SAMPLES, SIZE, SIZE)
    benchmark.extra_info.update(nfe=method.sampler.nfe, params=method.num_parameters())
    if benchmark.stats is not None:
        _MEANS[label] = benchmark.stats.stats.mean
        if label != "atfm-euler25" and "atfm-euler25" in _MEANS:
            ratio = _MEANS[label] / _MEANS["atfm-euler25"]
            benchmark.extra_info["vs_atfm"] = ratio
            print(f"\n{label}: {_MEANS[label]:.3f} s for {SAMPLES} samples = {ratio:.2f} x ATFM")
