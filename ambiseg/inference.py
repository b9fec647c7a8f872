"""`InferenceOptions`: how sampling runs (batching, precision, memory layout, compilation).

A module of its own, without torch at import, so that the command line can declare and check
these options before it loads torch; `ambiseg.evaluation` re-exports them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, closest

if TYPE_CHECKING:
    import torch

    from .method import Method

__all__ = ["InferenceOptions", "PRECISION_DTYPES", "COMPILE_MODES"]

PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # a precision's name -> the torch dtype's name
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How sampling runs: batching, numerics and layout. They change speed, not the model (bf16
    changes the numbers a little: measure its effect before trusting it, docs/sampling-speed.md).

    Attributes:
        max_batch: at most this many states per sampler call (bounds memory); None: the method's.
        image_batch: test images sampled together (their states share sampler calls up to
            `max_batch`; each image keeps its own generator, so results do not depend on it).
        precision: "fp32", or "bf16" (autocast of sampling on CPU or CUDA).
        channels_last: convert the method's 4-D weights to channels-last memory layout.
        compile: `torch.compile` the transport (the network every sampler step calls).
        compile_mode: `torch.compile`'s mode when `compile`: "default", "reduce-overhead" (CUDA
            graphs: fewer kernel launches), "max-autotune" (slow to compile).
    """

    max_batch: int | None = None
    image_batch: int = 8
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"--compile-mode is {self.compile_mode!r}{closest(self.compile_mode, COMPILE_MODES)}; "
                f"choose one of: {', '.join(COMPILE_MODES)}"
            )
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.image_batch < 1:
            raise ConfigError(f"--image-batch must be >= 1, got {self.image_batch}")
        if self.precision not in PRECISION_DTYPES:
            raise ConfigError(
                f"--precision is {self.precision!r}{closest(self.precision, PRECISION_DTYPES)}; "
                f"choose one of: {', '.join(PRECISION_DTYPES)}"
            )

    def prepare(self, method: Method, device: torch.device) -> Method:
        """Move `method` to `device` in eval mode with this layout (and compiled transport)."""
        import torch

        method.to(device).eval()
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        if self.compile:
            method.transport.compile(mode=None if self.compile_mode == "default" else self.compile_mode)
        return method

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The precision context sampling runs in."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device.type, dtype=getattr(torch, PRECISION_DTYPES[self.precision]))
