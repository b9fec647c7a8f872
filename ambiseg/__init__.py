"""ambiseg: ambiguous medical image segmentation (ATFM and its baselines) in one framework.

Every method draws an initial state from a Prior conditioned on the image, carries it to a
segmentation with a Transport, and a Sampler integrates that transport. Components are found
by name in registries; third-party packages add their own through the `ambiseg.plugins`
entry-point group.

`import ambiseg` is light: the names below are imported on first use (PEP 562), and the
registries import the built-in components on their first lookup, so the `ambiseg` command starts
without torch (`ambiseg --help`, `--version`, `list`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .errors import AmbisegError, CompatibilityError, ConfigError, DataError, UnknownNameError
    from .interfaces import LatentDraw, LatentPrior, Prior, Sampler, Transport
    from .method import Method
    from .pretrained import list_pretrained, load_pretrained
    from .recipes import Recipe, build, compose, list_components, register_recipe
    from .registry import Registry, load_plugins

__all__ = [
    "__version__",
    "build",
    "compose",
    "list_components",
    "register_recipe",
    "load_pretrained",
    "list_pretrained",
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

_HOMES = {  # public name -> the module that defines it
    **dict.fromkeys(["build", "compose", "list_components", "register_recipe", "Recipe"], "recipes"),
    "Method": "method",
    **dict.fromkeys(["load_pretrained", "list_pretrained"], "pretrained"),
    **dict.fromkeys(["Prior", "LatentPrior", "LatentDraw", "Transport", "Sampler"], "interfaces"),
    **dict.fromkeys(["Registry", "load_plugins"], "registry"),
    **dict.fromkeys(["AmbisegError", "ConfigError", "UnknownNameError", "CompatibilityError", "DataError"], "errors"),
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use; a submodule (`ambiseg.data`) too."""
    if name in _HOMES:
        value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":  # the submodule exists but something it imports does not
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
