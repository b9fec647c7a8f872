"""The flow's own effect: a prior + flow method (ATFM) against its prior alone.

ATFM carries each GTR draw x0 = sigmoid(logits) to a mask with a flow. Its *prior-only twin* is
the same prior module (the same weights, shared) with the identity transport and the direct
sampler: the `act-gtr` composition with those GTR weights, whose samples are the GTR draws
themselves, at the prior's own temperature. `Method.sample` draws each chunk's prior samples
first; a flow whose `expand` and `initial_state` draw nothing more (ATFM's straight path) then
consumes the generator exactly as its twin does, so with the same generator state the twin's
samples are the very x0 the flow starts from, and a paired difference isolates what the flow
does to them. A truncated path also draws noise after each chunk, so from the second chunk the
twin's draws differ; `sample_with_sources` pairs draws and outputs exactly in every case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from einops import rearrange
from numpy.typing import ArrayLike
from torch import Tensor

from .errors import CompatibilityError, ConfigError
from .interfaces import Prior
from .method import Method
from .methods.identity import IdentityTransport
from .results import bootstrap_ci
from .samplers import Direct

__all__ = ["FlowDraws", "check_flow_method", "prior_only_twin", "sample_with_sources", "paired_difference"]


def check_flow_method(method: Method) -> None:
    """A one-line `CompatibilityError` unless `method` is a mask prior (GTR-like) followed by a flow."""
    transport, prior = method.transport, method.prior
    if transport.kind != "flow":
        raise CompatibilityError(
            f"method '{method.name}' carries its prior's draws with a {transport.kind} "
            f"({type(transport).__name__}), not a flow; the flow effect needs a prior + flow method such as atfm"
        )
    if prior.draws != "mask":
        raise CompatibilityError(
            f"method '{method.name}': its prior {type(prior).__name__} draws {prior.draws} states, not masks, so "
            "its draws alone are no segmentation; the flow effect needs a GTR-like prior (draws='mask'), e.g. gtr"
        )


def prior_only_twin(method: Method) -> Method:
    """`method`'s prior (shared, not copied) with the identity transport and the direct sampler.

    Its samples are the prior's draws, e.g. sigmoid(GTR logits) at the prior's temperature: what
    `act-gtr` samples with these GTR weights. Chunked like `method` (same `max_batch`). When
    `method` has a config, the twin's rebuilds it (`Method.from_config`, weights not included).
    """
    check_flow_method(method)
    name, transport = f"{method.name}-prior-only", IdentityTransport()
    train = {"prior": method.train_config["prior"]} if "prior" in method.train_config else None
    twin = Method(method.prior, transport, Direct(), name=name, train=train, max_batch=method.max_batch)
    if method.has_config:  # the same twin, now with the config that rebuilds it
        config = {
            **method.config,
            "method": name,
            "transport": {"name": "identity"},
            "sampler": {"name": "direct"},
            "stages": list(twin.stages),
            "train": twin.train_config,
        }
        twin = Method(
            method.prior, transport, Direct(), name=name, train=train, max_batch=method.max_batch, config=config
        )
    return twin.train(method.training)


@dataclasses.dataclass(frozen=True)
class FlowDraws:
    """Prior draws and what the flow makes of them, sample for sample.

    Attributes:
        sources: the prior's draws x0 [B, S, H, W] (GTR: sigmoid of the logit draws, in [0, 1]).
        outputs: the method's samples [B, S, H, W]; `outputs[b, s]` is carried from `sources[b, s]`
            (on a truncated path from `sources[b, s]` noised to the path's start).
    """

    sources: Tensor
    outputs: Tensor


class _RecordingPrior(Prior):
    """`prior` itself, keeping each image's draws in order for `sample_with_sources`.

    `Method.sample` draws images group by group, and a group's chunks until each of its images
    has `num_samples`; so a call's rows belong to the images after those already complete.
    """

    draws = "mask"  # checked on the wrapped prior by `check_flow_method`

    def __init__(self, prior: Prior, images: int, num_samples: int) -> None:
        super().__init__()
        self.inner, self.num_samples = prior, num_samples
        self.rows: list[list[Tensor]] = [[] for _ in range(images)]
        self.first, self.done = 0, 0  # first image of the current group; samples it has so far

    def condition(self, images: Tensor) -> Any:
        return self.inner.condition(images)

    def sample(self, state: Any, num_samples: int, *, generator: torch.Generator | None = None) -> Tensor:
        x0 = self.inner.sample(state, num_samples, generator=generator)
        for j, draws in enumerate(x0):
            self.rows[self.first + j].append(draws)
        self.done += num_samples
        if self.done == self.num_samples:
            self.first, self.done = self.first + x0.shape[0], 0
        return x0


def sample_with_sources(
    method: Method,
    images: Tensor,
    num_samples: int,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    max_batch: int | None = None,
) -> FlowDraws:
    """`method.sample(images, num_samples, ...)`, the same outputs from the same generator state,
    together with the prior draw each output was carried from. `images`: [B, C, H, W]."""
    check_flow_method(method)
    recorder = _RecordingPrior(method.prior, images.shape[0], num_samples)
    recording = Method(recorder, method.transport, method.sampler, name=method.name, max_batch=method.max_batch)
    recording.train(method.training)  # `sample` restores this mode on the shared modules
    outputs = recording.sample(images, num_samples, generator=generator, max_batch=max_batch)
    sources = torch.stack([torch.cat(rows) for rows in recorder.rows])
    return FlowDraws(rearrange(sources, "b s 1 h w -> b s h w"), outputs)


def paired_difference(first: Mapping[str, ArrayLike], second: Mapping[str, ArrayLike]) -> dict[str, dict[str, float]]:
    """Mean per-image difference `first - second` of every metric, with its 95% bootstrap interval.

    Each metric holds [images], or [seeds, images] (images and seeds resampled, see
    `ambiseg.results.bootstrap_ci`), paired by position. An image that is NaN on either side
    (in any seed) is left out of that metric. Returns `{metric: {diff, lo, hi, first, second,
    n}}`: `first` and `second` are the two sides' means on the same images, `n` the images kept.
    """
    if set(first) != set(second):
        odd = sorted(set(first) ^ set(second))[0]
        raise ConfigError(f"paired_difference: metric '{odd}' is on one side only; score both sides alike")
    out = {}
    for key in first:
        a, b = np.asarray(first[key], dtype=np.float64), np.asarray(second[key], dtype=np.float64)
        if a.shape != b.shape or a.ndim not in (1, 2):
            raise ConfigError(
                f"paired_difference: metric '{key}' has shapes {a.shape} and {b.shape}; give both sides "
                "[images] or [seeds, images] of the same test images"
            )
        diff = a - b
        keep = np.isfinite(diff) if diff.ndim == 1 else np.isfinite(diff).all(axis=0)
        lo, hi = bootstrap_ci(diff[..., keep])
        means = [float(x[..., keep].mean()) if keep.any() else float("nan") for x in (diff, a, b)]
        out[key] = {"diff": means[0], "lo": lo, "hi": hi, "first": means[1], "second": means[2], "n": int(keep.sum())}
    return out
