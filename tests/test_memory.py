"""Sampling memory is bounded by chunking: the paper-width ST-Net at 128 x 128 never sees
more than `max_batch` states at once, whatever the number of samples."""

from __future__ import annotations

import torch

import ambiseg


def test_paper_width_stnet_is_chunked_at_128px():
    torch.manual_seed(0)
    method = ambiseg.build("atfm", preset="paper-lidc", sampler={"steps": 1}, max_batch=2)
    params = sum(p.numel() for p in method.transport.parameters())
    assert 30e6 < params < 45e6  # the paper's ~38.5 M ST-Net
    seen: list[int] = []
    method.transport.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    out = method.sample(torch.rand(1, 1, 128, 128), 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 5, 128, 128) and 0 <= out.min() and out.max() <= 1
    assert seen == [2, 2, 1]  # 5 samples in chunks of at most 2, one Euler step each
