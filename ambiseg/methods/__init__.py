"""Method components (one module per prior/transport family) and the registered recipes."""
from __future__ import annotations

from . import noise  # noqa: F401
from . import gtr, identity, sfm  # noqa: F401
from . import atfm  # noqa: F401
from . import deterministic  # noqa: F401
from . import probunet  # noqa: F401
from . import phiseg  # noqa: F401
from . import cimd  # noqa: F401
from . import tdpm  # noqa: F401

__all__: list[str] = []
