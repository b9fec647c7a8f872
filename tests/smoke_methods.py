"""Helpers for tests that need a registered method whose samples depend on every network."""

from __future__ import annotations

from typing import Any

import torch

import ambiseg


def woken_smoke_build(name: str, **overrides: Any) -> ambiseg.Method:
    """`name` at the smoke preset (seed 0) with its zero-initialised output layers set to small
    random weights, so an untrained flow or denoiser moves its samples."""
    torch.manual_seed(0)
    method = ambiseg.build(name, preset="smoke", **overrides)
    with torch.no_grad():
        for p in method.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(std=0.1)
    return method
