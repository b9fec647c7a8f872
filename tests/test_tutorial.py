"""docs/tutorial.md runs as written: its plug-in file is installed as a distribution with an
`ambiseg.plugins` entry point, its Python code trains and benchmarks the new recipes at smoke
size, its command line does the same through the entry point, and the generic contract tests
pick the plug-in's components up. Everything runs in subprocesses, so the plug-in never enters
this test process's registries."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


def run(args: list[str], cwd: Path, plugin_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_dir), str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_plugin_is_one_short_file():
    plugin = blocks("python")[0]
    code = [line for line in plugin.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 40 * 1.5, len(code)  # the budget: under 40 lines of logic (docstrings aside)
    logic = [line for line in code if not line.strip().startswith(('"""', "import", "from"))]
    assert len(logic) < 40, len(logic)


def test_the_plugin_installs_beside_the_runs_folder(tmp_path):
    """Section 3's pyproject.toml and pip line, run in a folder that also holds the runs/ of section
    2 (setuptools' guess would package runs/ and leave the plug-in out), install the plug-in and its
    entry point: `ambiseg list` shows its names. Offline: no build isolation, no index, and a prefix
    of its own instead of this environment."""
    toml, bash = blocks("toml")[0], blocks("bash")[0]
    entry = re.search(r'^\S+ = "(\w+)"$', toml, flags=re.M)
    assert entry is not None
    folder = tmp_path / "plug-in"
    (folder / "runs" / "tutorial" / "results").mkdir(parents=True)
    (folder / "runs" / "tutorial" / "leaderboard.md").write_text("a table\n")
    (folder / f"{entry.group(1)}.py").write_text(blocks("python")[0])
    (folder / "pyproject.toml").write_text(toml)
    pip = next(line for line in bash.splitlines() if line.startswith("pip install")).split("#")[0].split()
    offline = ["--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check", "-q"]
    prefix = tmp_path / "prefix"
    result = run([sys.executable, "-m", *pip, *offline, "--prefix", str(prefix)], folder, tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (finder,) = prefix.rglob("__editable__*.pth")  # the editable install's path hook, as pip wrote it
    show = f"import site; site.addsitedir({str(finder.parent)!r}); from ambiseg.cli import main; main(['list'])"
    result = run([sys.executable, "-c", show], tmp_path, tmp_path)  # the plug-in's folder is not on the path
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
    for name in ("power", "uniform-noise", "power-atfm", "uniform-cimd"):
        assert re.search(rf"\b{name}\b", result.stdout), result.stdout


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path, write_plugin):
    python, toml, bash = blocks("python"), blocks("toml"), blocks("bash")
    assert len(python) == 2 and len(toml) == 1 and len(bash) == 1
    entry = re.search(r'^(\S+) = "(\w+)"$', toml[0], flags=re.M)
    assert entry is not None
    plugins = tmp_path / "site"
    plugins.mkdir()
    write_plugin(plugins, entry.group(2), python[0], entry=entry.group(1))
    work = tmp_path / "work"
    work.mkdir()

    # section 2: the Python code, as written
    result = run([sys.executable, "-c", python[1]], work, plugins)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PowerPath(truncation=0.0)") and lines[0].endswith(" 0.8")
    scores = dict(line.split() for line in lines[1:])
    assert set(scores) == {"det-unet", "power-atfm", "uniform-cimd"}
    assert all(0 <= float(v) <= 2 for v in scores.values())
    assert sorted(p.name.split("-smoke")[0] for p in (work / "runs/tutorial/results").glob("*.json")) == [
        "det-unet-synthetic",
        "power-atfm-synthetic",
        "reference-synthetic",  # the bench's reference rows (majority, union, empty, raters)
        "uniform-cimd-synthetic",
    ]

    # section 3: the command line finds the recipes through the entry point (no import by hand)
    command = [line for line in bash[0].splitlines() if line.startswith("ambiseg bench")][0]
    args = command.split("#")[0].split()[1:]
    result = run([sys.executable, "-m", "ambiseg", *args], work, plugins)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((work / "runs/tutorial-cli/results").glob("*.json"))) == 4  # three methods + reference rows

    # the generic contract tests collect the plug-in's path and prior and pass on them
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests/test_contract.py"),
            "-k",
            "power or uniform-noise or uniform-cimd",
        ],
        ROOT,
        plugins,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    assert passed >= 8, result.stdout[-2000:]  # path and prior contracts, the recipes in the method contracts
