"""Method components (one module per prior/transport family) and the registered recipes."""
from __future__ import annotations

from . import noise  # noqa: F401

__all__: list[str] = []
