"""pyproject.toml is complete: every import declared, every core dependency bounded below,
every console script runs; optional extras degrade clearly. (The built wheel itself:
tests/integration/test_packaging.py.)"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = (ROOT / "pyproject.toml").read_text()


def _array(name: str) -> list[str]:
    """The strings of a top-level `name = [...]` array of pyproject.toml (no tomllib on 3.10)."""
    body = re.search(rf"^{re.escape(name)} = \[(.*?)^\]", PYPROJECT, re.S | re.M).group(1)
    return re.findall(r'"([^"]+)"', re.sub(r"#.*", "", body))


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


CORE = _array("dependencies")
EXTRAS = {name: _array(name) for name in re.findall(r"^(\w+) = \[", PYPROJECT.split("[project.optional-dependencies]")[1]
                                                    .split("\n[")[0], re.M)}
SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.]+:\w+)"', PYPROJECT.split("[project.scripts]")[1].split("\n[")[0], re.M))


def test_every_core_dependency_has_a_lower_bound():
    """.github/workflows/lowest.yml installs each core dependency at its `>=` bound."""
    assert CORE and all(re.search(r">=\d", req) for req in CORE), CORE


FIRST_PARTY = ("nmtbench", "benchmarks", "tests", "__future__")


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> first file importing it, over src/, benchmarks/, scripts/ and tests/."""
    found: dict[str, str] = {}
    for path in sorted([*ROOT.glob("src/**/*.py"), *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("scripts/**/*.py"),
                        *ROOT.glob("tests/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


# Import name -> distribution where they differ, for modules of optional extras that need not
# be installed where the tests run (an installed module is looked up in its metadata instead).
IMPORT_NAMES = {"onmt": "opennmt-py", "pynvml": "nvidia-ml-py", "yaml": "pyyaml"}


def test_every_import_is_declared():
    """Checked against pyproject.toml, whatever is installed: a module of an extra that is not
    installed here (e.g. `onmt` without `.[bench]`) is matched by its name."""
    declared = {_dist(r) for r in CORE} | {_dist(r) for reqs in EXTRAS.values() for r in reqs}
    dists = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _third_party_imports().items():
        candidates = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        candidates |= {IMPORT_NAMES.get(module, module.replace("_", "-"))}
        if not candidates & declared:
            missing.append(f"{module} (imported by {where}; distribution {sorted(candidates)})")
    assert missing == [], "declare in pyproject.toml: " + ", ".join(missing)


def test_every_import_scan_covers_the_benchmarks():
    """The benchmarks (top-level benchmarks/) import the peers' packages, the bench extra's
    `transformers` and `onmt`: the scan above reads them there."""
    found = _third_party_imports()
    assert found["transformers"].startswith("benchmarks/") and found["onmt"].startswith("benchmarks/"), found


def test_the_wheel_ships_nmtbench_only(monkeypatch):
    """setup.py's package list (what the wheel holds): nmtbench and its configs, never the
    top-level benchmarks/ package (the wheel's contents: tests/integration/test_packaging.py)."""
    import runpy

    import setuptools

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    runpy.run_path(str(ROOT / "setup.py"))
    packages = captured["packages"]
    assert "nmtbench" in packages and "nmtbench.configs" in packages
    assert all(p == "nmtbench" or p.startswith("nmtbench.") for p in packages), packages
    assert not (ROOT / "src" / "nmtbench" / "benchmarks").exists()


def test_console_scripts_are_the_entry_points_of_the_scripts():
    assert set(SCRIPTS) >= {"nmtbench-train", "nmtbench-evaluate", "nmtbench-translate", "nmtbench-report"}
    for name, target in SCRIPTS.items():
        if target.startswith("nmtbench.cli:"):
            script = ROOT / "scripts" / f"{name.removeprefix('nmtbench-').replace('-', '_')}.py"
            assert f"from nmtbench.cli import {target.split(':')[1]}" in script.read_text(), script


@pytest.fixture
def logging_restored():
    """An in-process Hydra app configures logging (dictConfig disables loggers that exist):
    put every logger back as it was, so later tests' log capture sees them."""
    import logging

    manager = logging.Logger.manager
    before = {name: (lg.disabled, lg.level, lg.propagate) for name, lg in manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    root = logging.getLogger()
    root_state = (list(root.handlers), root.level)
    yield
    for name, (disabled, level, propagate) in before.items():
        lg = logging.getLogger(name)
        lg.disabled, lg.propagate = disabled, propagate
        lg.setLevel(level)
    root.handlers[:] = root_state[0]
    root.setLevel(root_state[1])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help(name, monkeypatch, capsys, logging_restored):
    module, _, attr = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), attr)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    GlobalHydra.instance().clear()
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None)
    finally:
        GlobalHydra.instance().clear()
    out = capsys.readouterr().out
    assert "usage:" in out or "== Configuration groups ==" in out, out


def test_configs_come_from_the_checkout_when_running_from_source():
    from nmtbench.cli import CONFIG_DIR, config_dir

    assert config_dir() == ROOT / "configs" and CONFIG_DIR == str(ROOT / "configs")


def test_gpu_stats_without_nvidia_ml_py_names_the_extra(monkeypatch):
    from nmtbench.callbacks.gpu_stats import GpuStatsCallback

    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), is_global_zero=True)
    callback = GpuStatsCallback()
    callback.setup(trainer, None, "fit")
    assert not callback.enabled
    assert "nvidia-ml-py is not installed" in callback.disabled_reason
    assert "nmtbench[nvml]" in callback.disabled_reason
