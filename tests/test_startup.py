"""Start-up of the command line: `ambiseg --help`, `--version` and `list` (and `import ambiseg`)
load no heavy library, and the names `list` reads from the sources are the registries' own.

These are correctness tests; the times are measured in benchmarks/test_cli_startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import ambiseg
from ambiseg import registry
from ambiseg.catalog import read_builtin_names

HEAVY = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "matplotlib", "scipy", "numpy")


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "command", [["--help"], ["--version"], ["list"], []], ids=["help", "version", "list", "import"]
)
def test_the_light_commands_import_no_heavy_library(command):
    if command == ["list"] and registry.plugin_entry_points():
        pytest.skip("a plug-in is installed here: `ambiseg list` imports it, and with it the registries")
    code = textwrap.dedent(
        f"""
        import sys
        import ambiseg
        from ambiseg.cli import main
        if sys.argv[1:]:
            try:
                main(sys.argv[1:])
            except SystemExit as exc:
                assert exc.code == 0, exc.code
        print("\\nloaded:", [m for m in {HEAVY!r} if m in sys.modules])
        """
    )
    result = python(code, *command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "loaded: []"
    if command == ["--version"]:
        assert result.stdout.startswith(f"ambiseg, version {ambiseg.__version__}\n")


def test_the_names_read_from_the_sources_are_the_registries():
    """What `ambiseg list` shows without importing the components equals what they register."""
    if registry.plugin_entry_points():
        pytest.skip("a plug-in is installed here: the registries hold its names too")
    code = textwrap.dedent(
        """
        import json
        from ambiseg import registry
        from ambiseg.catalog import component_names, read_builtin_names
        light, static = component_names(), read_builtin_names()
        registry.load_builtins()
        live = {k: {n: list(r.aliases(n)) for n in r.names()} for k, r in registry.REGISTRIES.items()}
        if static is not None:
            static = {k: {n: list(a) for n, a in names.items()} for k, names in static.items()}
        print(json.dumps([light == read_builtin_names(), static, live]))
        """
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    from_sources, static, live = json.loads(result.stdout)
    assert static is not None, "a built-in registers a name that is not a literal string (CONTRIBUTING.md)"
    assert from_sources and static == live
    assert static["paths"] == {"cosine": ["vp"], "straight": ["ot"]} and static["methods"]["act-gtr"] == ["ssn"]


def test_the_reader_reads_literal_registrations_and_gives_up_on_computed_ones(tmp_path):
    (tmp_path / "components.py").write_text(
        textwrap.dedent(
            """
            from ambiseg.recipes import Recipe, register_recipe as add
            from ambiseg.registry import priors as prior_registry, samplers

            @prior_registry.register("flat", aliases=("level",))
            class Flat:
                def helper(self):
                    samplers.register(self.name)  # runs later, if at all: not a registration at import

            add(Recipe(name="flat-map", prior={}, transport={}, sampler={}, aliases=("fm",)))
            samplers.register("once")(print)
            """
        )
    )
    names = read_builtin_names(tmp_path)
    assert names is not None and names["priors"] == {"flat": ("level",)} and names["samplers"] == {"once": ()}
    assert names["methods"] == {"flat-map": ("fm",)} and names["metrics"] == {}

    (tmp_path / "more.py").write_text(
        "from ambiseg.registry import metrics\nfor name in ('a', 'b'):\n    metrics.register(name)(print)\n"
    )
    assert read_builtin_names(tmp_path) is None  # a computed name: the caller imports the modules instead
    (tmp_path / "more.py").write_text(
        textwrap.dedent(
            """
            from ambiseg.recipes import Recipe, register_recipe
            def family(name):
                register_recipe(Recipe(name=name, prior={}, transport={}, sampler={}))
            family("hidden")
            """
        )
    )
    assert read_builtin_names(tmp_path) is None  # registered through a helper: its names are not read here
    (tmp_path / "more.py").write_text(
        textwrap.dedent(
            """
            from ambiseg.recipes import Recipe, register_recipe
            parts = dict(prior={}, transport={}, sampler={})
            register_recipe(Recipe(name="spread", aliases=("sp",), **parts))
            """
        )
    )
    names = read_builtin_names(tmp_path)  # **fields cannot repeat the literal name and aliases
    assert names is not None and names["methods"] == {"flat-map": ("fm",), "spread": ("sp",)}
    (tmp_path / "more.py").write_text(
        "from ambiseg.recipes import Recipe, register_recipe\n"
        "parts = dict(name='x', prior={}, transport={}, sampler={})\n"
        "register_recipe(Recipe(**parts))\n"
    )
    assert read_builtin_names(tmp_path) is None  # the name inside **fields
    (tmp_path / "more.py").write_text(
        "from ambiseg.recipes import Recipe, register_recipe\n"
        "register_recipe(Recipe(name='x', prior={}, transport={}, sampler={}, **{'aliases': ('y',)}))\n"
    )
    assert read_builtin_names(tmp_path) is None  # aliases inside **fields
    (tmp_path / "more.py").write_text("from ambiseg.registry import priors\npriors.register('level')(print)\n")
    assert read_builtin_names(tmp_path) is None  # an alias registered again: the import names the error
