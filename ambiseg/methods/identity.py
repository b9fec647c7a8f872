"""The identity map: the prior's sample is the prediction ("Act. GTR" / SSN: GTR + sigmoid)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..interfaces import Transport
from ..registry import transports

__all__ = ["IdentityTransport"]


@transports.register("identity")
class IdentityTransport(Transport):
    """x1 = x0; with the GTR prior (whose samples are already sigmoid(logits)) that is SSN."""

    kind = "map"
    accepts = frozenset({"mask"})  # x1 = x0 is a segmentation only when x0 is one

    def forward(self, x: Tensor, t: Tensor | None, cond: Any) -> Tensor:
        """Returns the state `x` [N, 1, H, W] unchanged."""
        return x
