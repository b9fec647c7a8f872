"""The bottleneck attention's memory layout on CPU: torch's scaled_dot_product_attention on
transposed views (what `FullAttention` passed before) against contiguous tensors (what it passes
now), at the cpu-lidc ST-Net's bottleneck shape and at the paper width's.

Run: `python -m pytest benchmarks/test_attention_layout.py -s -p no:cacheprovider`
(docs/sampling-speed.md quotes it).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

SHAPES = {"cpu-lidc": (64, 2, 256, 8), "paper-lidc": (32, 4, 256, 32)}  # N, heads, pixels, head_dim


@pytest.mark.benchmark(group="attention-layout")
@pytest.mark.parametrize("layout", ["transposed", "contiguous"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_sdpa_layout(benchmark, shape, layout):
    n, h, p, d = SHAPES[shape]
    q, k, v = torch.randn(3, n, h, d, p, generator=torch.Generator().manual_seed(0))  # [N, heads, dim, pixels]
    q, k, v = (a.transpose(-1, -2) for a in (q, k, v))  # views [N, heads, pixels, dim], as FullAttention had
    if layout == "contiguous":
        q, k, v = (a.contiguous() for a in (q, k, v))

    def attend() -> torch.Tensor:
        with torch.inference_mode():
            return F.scaled_dot_product_attention(q, k, v)

    out = benchmark.pedantic(attend, rounds=10, warmup_rounds=2)
    reference = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1) @ v
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
