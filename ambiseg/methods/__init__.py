"""Method components (one module per prior/transport family) and the registered recipes."""

from __future__ import annotations

from . import (  # noqa: F401
    atfm,  # noqa: F401
    cimd,  # noqa: F401
    deterministic,  # noqa: F401
    gtr,
    identity,
    noise,  # noqa: F401
    phiseg,  # noqa: F401
    probunet,  # noqa: F401
    sfm,
    tdpm,  # noqa: F401
)

__all__: list[str] = []
