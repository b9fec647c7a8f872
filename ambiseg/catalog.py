"""The names of the built-in components, read from ambiseg's sources without importing them.

`ambiseg list` should answer at once, but importing the component modules takes seconds (torch,
torchvision). Every built-in registers with a literal call that `ast` can read:
`@priors.register("gtr")`, `@paths.register("straight", aliases=("ot",))`,
`register_recipe(Recipe(name="act-gtr", aliases=("ssn",), ...))`. When a registration is not
literal (a name computed at run time) the reader gives up and the registries are asked instead;
`tests/test_startup.py` checks that what it reads equals what the registries hold after import.
"""

from __future__ import annotations

import ast
from pathlib import Path

from . import registry

__all__ = ["Names", "component_names", "read_builtin_names"]

Names = dict[str, dict[str, tuple[str, ...]]]  # registry kind -> name -> its aliases, names sorted
_PACKAGE = Path(__file__).parent
_RECIPE_ALIASES_AT = 7  # the position of `aliases` among Recipe's fields


class _Unreadable(Exception):
    """A registration whose name or aliases are not literal strings."""


def _string(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    raise _Unreadable


def _name_and_aliases(call: ast.Call, *, aliases_at: int | None) -> tuple[str, tuple[str, ...]]:
    """The literal `name` (first argument or keyword) and `aliases` of a registering call."""
    keywords = {kw.arg: kw.value for kw in call.keywords}
    if any(isinstance(arg, ast.Starred) for arg in call.args):  # *args
        raise _Unreadable
    # **fields may carry the name or aliases unless both are given: then Python refuses a repeat
    if None in keywords and not ({"name", "aliases"} <= keywords.keys() or (call.args and "aliases" in keywords)):
        raise _Unreadable
    if aliases_at is not None and len(call.args) > aliases_at:
        raise _Unreadable
    name = call.args[0] if call.args else keywords.get("name")
    aliases = keywords.get("aliases")
    if name is None:
        raise _Unreadable
    if aliases is None:
        return _string(name), ()
    if not isinstance(aliases, (ast.Tuple, ast.List)):
        raise _Unreadable
    return _string(name), tuple(_string(alias) for alias in aliases.elts)


class _Reader(ast.NodeVisitor):
    """The registrations a module makes when imported: `R.register(...)` on a registry imported
    from `ambiseg.registry`, and `register_recipe(Recipe(...))`. Function bodies are skipped
    (they run later, if at all) and their decorators read; a call at import of a function whose
    body registers makes the module unreadable (what it registers is not literal here)."""

    def __init__(self) -> None:
        self.registries: dict[str, str] = {}  # local name -> registry kind
        self.recipe_names: dict[str, str] = {}  # local name -> "register_recipe" or "Recipe"
        self.found: list[tuple[str, str, tuple[str, ...]]] = []
        self.registering: set[str] = set()  # functions of the module whose bodies register

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = (node.module or "").split(".")
        if node.level == 0 and module[0] != "ambiseg":
            return
        for alias in node.names:
            if module[-1] == "registry" and alias.name in registry.REGISTRIES:
                self.registries[alias.asname or alias.name] = alias.name
            if module[-1] in ("recipes", "method") and alias.name in ("register_recipe", "Recipe"):
                self.recipe_names[alias.asname or alias.name] = alias.name

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        body = ast.Module(body=node.body, type_ignores=[])
        if any(isinstance(call, ast.Call) and self._registers(call) for call in ast.walk(body)):
            self.registering.add(node.name)  # a call of it at import registers what cannot be read

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        return

    def _registers(self, node: ast.Call) -> bool:
        """Whether the call registers something: `R.register(...)` or `register_recipe(...)`."""
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name):
            return func.value.id in self.registries
        return isinstance(func, ast.Name) and self.recipe_names.get(func.id) == "register_recipe"

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in self.registering:
            raise _Unreadable
        if isinstance(func, ast.Attribute) and func.attr == "register" and isinstance(func.value, ast.Name):
            kind = self.registries.get(func.value.id)
            if kind is not None:
                self.found.append((kind, *_name_and_aliases(node, aliases_at=None)))
        elif isinstance(func, ast.Name) and self.recipe_names.get(func.id) == "register_recipe":
            recipe = node.args[0] if len(node.args) == 1 and not node.keywords else None
            if not (
                isinstance(recipe, ast.Call)
                and isinstance(recipe.func, ast.Name)
                and self.recipe_names.get(recipe.func.id) == "Recipe"
            ):
                raise _Unreadable
            self.found.append(("methods", *_name_and_aliases(recipe, aliases_at=_RECIPE_ALIASES_AT)))
        self.generic_visit(node)


def read_builtin_names(package: Path = _PACKAGE) -> Names | None:
    """Every registry kind with the names and aliases the modules under `package` register, read
    from their sources; None when one cannot be read (then import them and ask the registries)."""
    found: Names = {kind: {} for kind in registry.REGISTRIES}
    try:
        for path in sorted(package.rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if ".register(" not in text and "register_recipe(" not in text:
                continue
            reader = _Reader()
            reader.visit(ast.parse(text, filename=str(path)))
            for kind, name, aliases in reader.found:
                taken = {key for held, its in found[kind].items() for key in (held, *its)}
                if taken & {name, *aliases}:  # registered twice: the import gives the error
                    return None
                found[kind][name] = aliases
    except (_Unreadable, OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    return {kind: dict(sorted(names.items())) for kind, names in found.items()}


def component_names() -> Names:
    """Every registry kind with its names and their aliases: what `ambiseg list` shows.

    In a process where nothing is registered yet and no plug-in is installed, they are read from
    the sources (no torch); otherwise the registries are loaded (built-ins, then plug-ins) and asked.
    """
    if registry.nothing_registered() and not registry.plugin_entry_points():
        names = read_builtin_names()
        if names is not None:
            return names
    return {kind: {name: tuple(reg.aliases(name)) for name in reg.names()} for kind, reg in registry.REGISTRIES.items()}
