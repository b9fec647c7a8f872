"""Method components (one module per prior/transport family) and the registered recipes."""

from __future__ import annotations

from . import (  # each module registers its components
    atfm,
    ccdm,
    cimd,
    deterministic,
    flow_ssn,
    gtr,
    hpunet,
    identity,
    noise,
    phiseg,
    probunet,
    sfm,
    tdpm,
)

__all__: list[str] = []
