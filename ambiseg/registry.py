"""Name -> component registries with typed configs, and plug-in discovery.

A component registers once with a decorator; its config is a dataclass derived from the
factory's keyword parameters, so every hyperparameter can be overridden by keyword, unknown
keys are refused with the closest valid key, and string values (from the CLI) are coerced
to the declared type.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from .errors import ConfigError, PluginWarning, UnknownNameError, closest

__all__ = [
    "Entry",
    "Registry",
    "canonical_method",
    "coerce",
    "type_name",
    "load_plugins",
    "load_builtins",
    "plugin_entry_points",
    "nothing_registered",
    "PLUGIN_GROUP",
    "BUILTIN_MODULES",
    "priors",
    "transports",
    "samplers",
    "paths",
    "noise_schedules",
    "methods",
    "backbones",
    "datasets",
    "metrics",
    "REGISTRIES",
]

PLUGIN_GROUP = "ambiseg.plugins"
# the modules whose import registers ambiseg's own components, imported on a registry's first lookup
BUILTIN_MODULES = (
    "ambiseg.backbones",
    "ambiseg.data",
    "ambiseg.methods",
    "ambiseg.metrics",
    "ambiseg.noise_schedules",
    "ambiseg.paths",
    "ambiseg.samplers",
)


def type_name(annotation: Any) -> str:
    """A readable name of a type annotation: `float | None`, `tuple of int`, `bool`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(inner) > 1 and Ellipsis not in args:
            return f"tuple of {len(inner)} {type_name(inner[0])}"
        return f"{'tuple' if origin is tuple else 'list'} of {type_name(inner[0]) if inner else 'values'}"
    if origin is dict:
        return "JSON object"
    return getattr(annotation, "__name__", str(annotation))


def _fail(value: Any, annotation: Any, where: str) -> ConfigError:
    return ConfigError(f"{where}: cannot read {value!r} as {type_name(annotation)}")


def coerce(value: Any, annotation: Any, *, where: str) -> Any:
    """`value` as the declared `annotation`, or a `ConfigError` naming `where`, the value and the type.

    Strings (from the CLI) are parsed: bool, int, float, `None`/`null` for optional types,
    comma-separated tuples and lists. Values of another type are checked (an int where a float
    is declared is widened; an integral float where an int is declared is narrowed). Types this
    function does not know (classes, `Any`, `str`) pass unchanged when their kind fits.
    """
    if annotation in (Any, inspect.Parameter.empty) or isinstance(annotation, (str, typing.TypeVar)):
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise _fail(value, annotation, where)
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where=where)
            except ConfigError:
                continue
        raise _fail(value, annotation, where)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _fail(value, annotation, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        low = str(value).lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise _fail(value, annotation, where)
    if annotation is int:
        if isinstance(value, bool):
            raise _fail(value, annotation, where)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _fail(value, annotation, where)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _fail(value, annotation, where)
    if origin in (tuple, list, collections.abc.Sequence):
        if isinstance(value, str):
            parts = [p.strip() for p in value.strip().strip("()[]").split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise _fail(value, annotation, where)
        inner = [a for a in args if a is not Ellipsis]
        fixed = origin is tuple and len(inner) > 1 and Ellipsis not in args
        if fixed and len(parts) != len(inner):
            raise _fail(value, annotation, where)
        items = [
            coerce(p, inner[k] if fixed else (inner[0] if inner else Any), where=where) for k, p in enumerate(parts)
        ]
        return list(items) if origin is list else tuple(items)
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
        raise _fail(value, annotation, where)
    return value


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered component: its name, factory, typed config and free-form info."""

    name: str
    factory: Callable[..., Any]
    config: type
    info: dict[str, Any]
    kind: str

    def make_config(self, **overrides: Any) -> Any:
        """The config dataclass with `overrides` applied; `None` values keep the default."""
        fields = {f.name: f for f in dataclasses.fields(self.config)}
        values = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in fields:
                raise ConfigError(
                    f"{self.kind} '{self.name}' has no option '{key}'{closest(key, fields)}; "
                    f"options: {', '.join(fields) or '(none)'}"
                )
            values[key] = coerce(value, fields[key].type, where=f"{self.kind} '{self.name}' option '{key}'")
        missing = [
            n
            for n, f in fields.items()
            if n not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ConfigError(f"{self.kind} '{self.name}' needs option(s): {', '.join(missing)}")
        return self.config(**values)

    def create(self, *args: Any, **overrides: Any) -> Any:
        """Build the component; positional args pass straight to the factory."""
        cfg = self.make_config(**overrides)
        return self.factory(*args, **dataclasses.asdict(cfg))


def _signatures(factory: Callable[..., Any], skip: int) -> list[tuple[inspect.Parameter, Any]]:
    """The factory's keyword parameters with their hints; a class `__init__` taking `**kwargs`
    is followed to the next base class's `__init__`, so a subclass keeps its parent's options.
    A parameter named with a leading underscore is how a subclass talks to its base, not an option."""
    if not inspect.isclass(factory):
        target = getattr(factory, "func", factory)
        params = list(inspect.signature(factory).parameters.values())[skip:]
        return [(p, _hints(target).get(p.name)) for p in params]
    out: list[tuple[inspect.Parameter, Any]] = []
    seen: set[str] = set()
    first = True
    for klass in factory.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        init = vars(klass)["__init__"]
        params = list(inspect.signature(init).parameters.values())[1 + (skip if first else 0) :]
        hints = _hints(init)
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) or p.name in seen:
                continue
            if p.name.startswith("_"):
                continue
            seen.add(p.name)
            out.append((p, hints.get(p.name)))
        first = False
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def _hints(target: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolved forward references: fall back to raw annotations
        return {}


def _copy_factory(default: Any) -> Callable[[], Any]:
    """A `default_factory` giving every config its own shallow copy of a mutable default."""
    return lambda: type(default)(default)


def _config_type(kind: str, name: str, factory: Callable[..., Any], skip: int) -> type:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for p, hint in _signatures(factory, skip):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hint if hint is not None else (p.annotation if p.annotation is not p.empty else Any)
        default = p.default
        if default is p.empty:
            fields.append((p.name, ann))
        elif isinstance(default, (list, dict, set)):
            fields.append((p.name, ann, dataclasses.field(default_factory=_copy_factory(default))))
        else:
            fields.append((p.name, ann, dataclasses.field(default=default)))
    cls_name = "".join(part.capitalize() for part in f"{name}_{kind}_config".replace("-", "_").split("_"))
    return dataclasses.make_dataclass(cls_name, fields, frozen=True, kw_only=True)


class Registry:
    """A named collection of component factories of one kind (priors, samplers, ...)."""

    def __init__(self, kind: str, *, positional: int = 0, singular: str | None = None) -> None:
        """`positional`: how many leading factory parameters are runtime inputs, not config;
        `singular`: one entry's name in messages (default: `kind` without its final "s")."""
        self.kind = kind
        self.positional = positional
        self._singular = singular
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    @property
    def singular(self) -> str:
        """ "sampler" for the "samplers" registry (used in messages)."""
        if self._singular is not None:
            return self._singular
        return self.kind[:-1] if self.kind.endswith("s") else self.kind

    def register(self, name: str, *, aliases: tuple[str, ...] = (), **info: Any) -> Callable[[Any], Any]:
        """Decorator registering a class or function under `name` (and `aliases`)."""

        def deco(factory: Any) -> Any:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ConfigError(f"{self.singular} '{key}' is registered twice")
            config = _config_type(self.kind, name, factory, self.positional)
            self._entries[name] = Entry(name, factory, config, dict(info), self.singular)
            for alias in aliases:
                self._aliases[alias] = name
            return factory

        return deco

    def canonical(self, name: str) -> str:
        """The registered name behind `name` or its alias; raises with the closest match."""
        load_builtins()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        load_plugins()
        if name in self._entries or name in self._aliases:
            return self._aliases.get(name, name)
        known = sorted([*self._entries, *self._aliases])
        broken = "".join(f"; {why}" for why in _broken.values())  # the name may be one of theirs
        raise UnknownNameError(
            f"unknown {self.singular} '{name}'{closest(name, known)}{broken}; known: {', '.join(known)}"
        )

    def get(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def create(self, name: str, *args: Any, **overrides: Any) -> Any:
        """Build component `name` with keyword overrides of its config."""
        return self.get(name).create(*args, **overrides)

    def from_spec(self, spec: str | dict[str, Any], *, where: str, **fixed: Any) -> Any:
        """Build a component from its name or a `{"name": ..., **options}` dict (a nested spec).

        `where` names the option that holds the spec in error messages (e.g. "transport 'sfm' option
        'path'"); `fixed` are options the owner sets itself (a diffusion's `steps`), which the spec
        may not repeat.
        """
        if isinstance(spec, str):
            name, options = spec, {}
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            name, options = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        else:
            raise ConfigError(
                f"{where}: expected a {self.singular} name or a dict with a 'name' and options, got {spec!r}; "
                f"{self.kind}: {', '.join(self.names())}"
            )
        clash = sorted(set(options) & set(fixed))
        if clash:
            raise ConfigError(
                f"{where}: '{clash[0]}' is set outside the spec ({clash[0]}={fixed[clash[0]]!r}); drop it from the spec"
            )
        return self.create(name, **options, **fixed)

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def aliases(self, name: str) -> list[str]:
        load_builtins()
        return sorted(a for a, n in self._aliases.items() if n == name)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_builtins()
        return len(self._entries)

    def __repr__(self) -> str:
        load_builtins()
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


priors = Registry("priors")
transports = Registry("transports")
samplers = Registry("samplers")
paths = Registry("paths")
noise_schedules = Registry("noise_schedules", singular="noise schedule")
methods = Registry("methods")
backbones = Registry("backbones", positional=2)
datasets = Registry("datasets")
metrics = Registry("metrics", positional=2)
REGISTRIES = {
    r.kind: r for r in (priors, transports, samplers, paths, noise_schedules, methods, backbones, datasets, metrics)
}

_builtins_loaded = False
_plugins_loaded = False
_broken: dict[str, str] = {}  # entry point -> why it failed to load, repeated by an unknown name's error


def load_builtins() -> None:
    """Import the modules of ambiseg's own components once (`BUILTIN_MODULES`), which registers them.

    Every lookup calls it, so `import ambiseg` stays light (no torch) until a name is needed.
    Code that registers a built-in's name before this ran is refused here (the built-in's
    registration raises); plug-ins load after the built-ins, so theirs are refused at the plug-in.
    """
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: the modules imported below register through these registries
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    except BaseException:
        _builtins_loaded = False
        raise


def nothing_registered() -> bool:
    """Whether every registry is still empty: no built-in imported, no plug-in loaded, nothing of the caller's."""
    return not any(r._entries for r in REGISTRIES.values())


def plugin_entry_points() -> list[metadata.EntryPoint]:
    """The installed `ambiseg.plugins` entry points (loaded or not)."""
    return list(metadata.entry_points(group=PLUGIN_GROUP))


def _failure(ep: metadata.EntryPoint, exc: Exception) -> str:
    """One line: which plug-in failed, the error, and how to fix it (reinstall or uninstall)."""
    dist = getattr(ep, "dist", None)
    uninstall = f"pip uninstall {dist.name}" if dist is not None else "pip uninstall the package that provides it"
    return (
        f"plug-in '{ep.name}' ({ep.value}) failed to load ({type(exc).__name__}: {exc}), so its names are missing; "
        f"fix its code or install it again (`pip install -e .` in its folder), or remove it (`{uninstall}`)"
    )


def load_plugins(*, force: bool = False) -> list[str]:
    """Import every `ambiseg.plugins` entry point once; a callable target is called.

    A plug-in registers its components with the decorators above when imported (or called),
    so a new method needs no edit to ambiseg. A plug-in that fails (not installed, an error in
    its code) leaves the others and ambiseg working: it is reported as a `PluginWarning` naming
    it, the error and the fix, and the error of an unknown name repeats it. Returns the names of
    the loaded entry points.
    """
    global _plugins_loaded
    load_builtins()  # first, so that a plug-in's name that a built-in holds is refused at the plug-in
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    _broken.clear()
    loaded = []
    for ep in plugin_entry_points():
        try:
            target = ep.load()
            if callable(target) and not inspect.ismodule(target):
                target()
        except Exception as exc:  # any error of a third party's code, ours (a name registered twice) too
            _broken[ep.name] = _failure(ep, exc)
            warnings.warn(_broken[ep.name], PluginWarning, stacklevel=2)
            continue
        loaded.append(ep.name)
    return loaded


def canonical_method(name: str) -> str:
    """The registered name of method `name` when it is a registered name or alias (a record or
    checkpoint written under a former name joins today's), else `name` unchanged."""
    return methods.canonical(name) if name in methods else name
