"""Registry: typed configs, errors with suggestions, aliases, plug-ins via entry points."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import ambiseg
from ambiseg.cli import main
from ambiseg.errors import ConfigError, PluginWarning, UnknownNameError
from ambiseg.registry import Registry, load_plugins, methods, priors


def make_registry() -> Registry:
    reg = Registry("widgets")

    @reg.register("box", aliases=("crate",))
    class Box:
        def __init__(
            self, size: int = 3, ratio: float = 0.5, flat: bool = False, dims: tuple[int, ...] = (1, 2)
        ) -> None:
            self.size, self.ratio, self.flat, self.dims = size, ratio, flat, dims

    @reg.register("ball")
    def ball(radius: float) -> dict:
        return {"radius": radius}

    return reg


def test_create_with_defaults_and_overrides():
    reg = make_registry()
    box = reg.create("box")
    assert (box.size, box.ratio, box.flat, box.dims) == (3, 0.5, False, (1, 2))
    box = reg.create("crate", size=7, ratio=None)  # alias; None keeps the default
    assert (box.size, box.ratio) == (7, 0.5)


def test_string_values_are_coerced_to_declared_types():
    box = make_registry().create("box", size="4", ratio="0.25", flat="true", dims="3,4,5")
    assert (box.size, box.ratio, box.flat, box.dims) == (4, 0.25, True, (3, 4, 5))
    with pytest.raises(ConfigError, match="cannot read 'four' as int"):
        make_registry().create("box", size="four")


def test_config_is_a_typed_dataclass():
    entry = make_registry().get("box")
    cfg = entry.make_config(size=2)
    assert cfg.size == 2 and type(cfg).__dataclass_fields__["size"].type is int


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(UnknownNameError) as info:
        make_registry().get("bx")
    msg = str(info.value)
    assert "unknown widget 'bx'" in msg and "did you mean 'box'" in msg and "ball, box, crate" in msg


def test_unknown_option_names_closest_option():
    with pytest.raises(ConfigError, match="no option 'sise'.*did you mean 'size'"):
        make_registry().create("box", sise=3)


def test_missing_required_option():
    with pytest.raises(ConfigError, match="needs option.*radius"):
        make_registry().create("ball")
    assert make_registry().create("ball", radius="2.5") == {"radius": 2.5}


def test_duplicate_names_are_refused():
    reg = make_registry()
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("crate")(lambda: None)


def test_list_components_covers_every_registry():
    comps = ambiseg.list_components()
    assert set(comps) == set(
        "priors transports samplers paths noise_schedules methods backbones datasets metrics".split()
    )
    assert {"euler", "heun", "midpoint", "rk4", "dopri5", "direct"} <= set(comps["samplers"])
    assert {"unet", "smp"} <= set(comps["backbones"])


def test_plugin_from_an_installed_distribution(tmp_path, monkeypatch, write_plugin):
    """A real distribution on sys.path (dist-info + entry_points.txt) registers a prior."""
    write_plugin(
        tmp_path,
        "ambiseg_demo_plugin",
        """
        import torch
        from ambiseg import Prior
        from ambiseg.registry import priors

        @priors.register("demo-zeros")
        class Zeros(Prior):
            def __init__(self, value: float = 0.0):
                super().__init__()
                self.value = value
            def sample(self, state, num_samples, *, generator=None):
                b, _, h, w = state.shape
                return torch.full((b, num_samples, 1, h, w), self.value)
    """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        assert "demo" in load_plugins(force=True)
        assert "demo-zeros" in ambiseg.list_components()["priors"]
        method = ambiseg.compose(prior={"name": "demo-zeros", "value": 0.25}, transport=Identity(), sampler="direct")
        import torch

        out = method.sample(torch.zeros(2, 1, 8, 8), 3)
        assert out.shape == (2, 3, 8, 8) and torch.allclose(out, torch.full_like(out, 0.25))
    finally:
        priors._entries.pop("demo-zeros", None)
        sys.modules.pop("ambiseg_demo_plugin", None)


@pytest.fixture
def broken_plugin(monkeypatch):
    """One entry point naming a module that does not exist, the plug-ins not loaded yet."""
    from importlib import metadata

    ep = metadata.EntryPoint(name="broken", value="no_such_module_xyz", group="ambiseg.plugins")
    monkeypatch.setattr("ambiseg.registry.metadata.entry_points", lambda group: [ep])
    monkeypatch.setattr("ambiseg.registry._plugins_loaded", False)
    monkeypatch.setattr("ambiseg.registry._broken", {})  # what the test leaves there is dropped after it


def test_a_broken_plugin_is_a_warning_and_named_by_an_unknown_name(broken_plugin):
    fix = r"\(ModuleNotFoundError: No module named 'no_such_module_xyz'\).*pip install -e \..*pip uninstall"
    with pytest.warns(PluginWarning, match=r"plug-in 'broken' \(no_such_module_xyz\) failed to load " + fix):
        assert load_plugins(force=True) == []
    assert "gtr" in priors.names()  # ambiseg's own names are all there
    refused = r"unknown prior 'my-prior'; plug-in 'broken' .*failed to load.*; known: "
    with pytest.raises(UnknownNameError, match=refused):
        priors.get("my-prior")


def test_the_cli_works_beside_a_broken_plugin(broken_plugin, tmp_path, capsys, monkeypatch):
    """`ambiseg list` lists, with one warning line; a command needing the plug-in fails in one line."""
    with pytest.raises(SystemExit) as info:
        main(["list"])
    out, err = capsys.readouterr()
    assert info.value.code == 0 and "act-gtr" in out and "dopri5" in out
    assert err.count("\n") == 1 and err.startswith("warning: plug-in 'broken' (no_such_module_xyz) failed to load")
    assert "No module named 'no_such_module_xyz'" in err and "pip uninstall" in err

    monkeypatch.setattr("ambiseg.registry._plugins_loaded", False)  # as in a new process
    with pytest.raises(SystemExit) as info:
        main(["train", "my-method", "--preset", "smoke", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.splitlines()
    assert info.value.code == 2 and len(err) == 2 and err[0].startswith("warning: plug-in 'broken'")
    assert err[1].startswith("error: unknown method 'my-method'; plug-in 'broken' (no_such_module_xyz) failed")
    assert not (tmp_path / "run").exists()


class Identity(ambiseg.Transport):
    kind = "map"
    accepts = frozenset({"noise"})

    def forward(self, x, t, cond):
        return x


def test_every_method_has_a_row_in_the_readme_and_is_named_in_the_docs():
    """The README's methods table is where users look a method up: a new recipe must be in it."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    table = readme.split("## Methods", 1)[1].split("\n## ", 1)[0]
    listed = {
        name for line in table.splitlines() if line.startswith("| `") for name in line.split("|")[1].split("`")[1::2]
    }
    registered = set(methods.names())
    assert registered - listed == set(), f"README's methods table lacks {sorted(registered - listed)}"
    unknown = sorted(name for name in listed if name not in methods)  # an alias counts as known
    assert unknown == [], f"README's methods table names unknown methods {unknown}"
    docs = " ".join(p.read_text() for p in (root / "docs").rglob("*.md"))
    assert [m for m in sorted(registered) if f"`{m}`" not in docs] == []
