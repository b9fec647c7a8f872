"""User-facing errors.

Every error a user can cause (a bad name, a bad config value, a bad file) is an
`AmbisegError`; the CLI turns it into one readable line and exit code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AmbisegError",
    "ConfigError",
    "UnknownNameError",
    "CompatibilityError",
    "DataError",
    "NonFiniteError",
    "TrainingError",
    "PluginWarning",
    "closest",
]


class AmbisegError(Exception):
    """Base class of errors caused by user input; the message says what, where and how to fix."""


class ConfigError(AmbisegError, ValueError):
    """A configuration key or value is invalid."""


class UnknownNameError(ConfigError, KeyError):
    """A registry name is unknown."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CompatibilityError(ConfigError):
    """Components that cannot work together (e.g. a flow sampler on a diffusion transport)."""


class DataError(AmbisegError):
    """A dataset file or folder is missing, malformed or unsafe."""


class TrainingError(AmbisegError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class NonFiniteError(AmbisegError):
    """Weights or samples hold NaN or inf: an error, never a score."""


class PluginWarning(UserWarning):
    """An `ambiseg.plugins` entry point failed to load; ambiseg goes on without the names it registers."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice to `name`, or '' when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
