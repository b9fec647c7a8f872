"""ambiseg: ambiguous medical image segmentation (ATFM and its baselines) in one framework.

Every method draws an initial state from a Prior conditioned on the image, carries it to a
segmentation with a Transport, and a Sampler integrates that transport. Components are found
by name in registries; third-party packages add their own through the `ambiseg.plugins`
entry-point group.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import (  # imported to register their components
    backbones,
    data,
    methods,
    metrics,
    noise_schedules,
    paths,
    samplers,
)
from .errors import AmbisegError, CompatibilityError, ConfigError, DataError, UnknownNameError
from .interfaces import LatentDraw, LatentPrior, Prior, Sampler, Transport
from .method import Method, Recipe, build, compose, list_components, register_recipe
from .registry import Registry, load_plugins

__all__ = [
    "__version__",
    "build",
    "compose",
    "list_components",
    "register_recipe",
    "Method",
    "Recipe",
    "Prior",
    "LatentPrior",
    "LatentDraw",
    "Transport",
    "Sampler",
    "Registry",
    "load_plugins",
    "AmbisegError",
    "ConfigError",
    "UnknownNameError",
    "CompatibilityError",
    "DataError",
]
