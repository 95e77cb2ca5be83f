"""The wheel works without the repository: built from a copy of the sources, installed into a
fresh virtualenv, its console scripts compose and train from an empty directory with the
configs shipped inside it.

The fresh venv sees the dependencies of the environment running the tests (torch is not
reinstalled) through a .pth file listing that environment's site-packages: `venv
--system-site-packages` would give it the *base* interpreter's packages instead, which lack
them when the tests run in a venv (as the README suggests). A .pth entry adds a directory to
sys.path without running the .pth files inside it, so the checkout's editable install stays
out and `import nmtbench` finds the wheel."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# benchmarks/ is copied too, so the build sees it as it is in the checkout (and leaves it out).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "src", "configs", "benchmarks")
# The smoke experiment shrunk to seconds (as tests/conftest.py tiny_train_config does).
TINY = [
    "experiment=smoke", "data.toy.num_train=300", "data.toy.num_valid=20", "data.toy.num_test=20",
    "data.vocab_size=200", "data.max_tokens=400", "trainer.max_steps=2", "trainer.max_time=null",
    "trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
    "callbacks.throughput.cpu_benchmark_seconds=0", "model.d_model=16", "model.num_heads=2", "model.d_ff=32",
    "model.num_encoder_layers=1", "model.num_decoder_layers=1",
]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin directory, wheel path, environment) of the wheel installed into a fresh venv."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src_copy"  # a copy, so no stale build/ or egg-info of the checkout ends up in the wheel
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
         tmp, env)
    (wheel,) = wheels.glob("nmtbench-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    venv_site = _run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp, env).stdout.strip()
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(venv_site, "tests_outer_env.pth").write_text("".join(f"{p}\n" for p in ours if Path(p).is_dir()))
    _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp, env)
    return bin_dir, wheel, env


def test_wheel_holds_every_source_file_config_and_the_licence(installed):
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"nmtbench/{p.relative_to(ROOT / 'src' / 'nmtbench').as_posix()}"
                for p in (ROOT / "src" / "nmtbench").rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    expected |= {f"nmtbench/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected - names == set()
    # the benchmarks live beside their results at the repository's top level, not in the wheel
    assert not [n for n in names if n.startswith(("benchmarks/", "nmtbench/benchmarks/"))]
    assert any(n.endswith("licenses/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nmtbench-train = nmtbench.cli:train" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_console_scripts_run_from_an_empty_directory(installed, tmp_path):
    bin_dir, _, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import nmtbench.cli as c; print(c.__file__); print(c.CONFIG_DIR)"],
                 tmp_path, env).stdout.split()
    assert all(Path(p).is_relative_to(bin_dir.parent) for p in where), where  # the wheel, not the checkout

    job = _run([str(bin_dir / "nmtbench-train"), "experiment=smoke", "--cfg", "job"], tmp_path, env).stdout
    assert "source: toy" in job and "task_name: smoke" in job
    help_text = _run([str(bin_dir / "nmtbench-train"), "--help"], tmp_path, env).stdout
    assert "== Configuration groups ==" in help_text and "mini_transformer" in help_text
    for name in ("nmtbench-evaluate", "nmtbench-translate", "nmtbench-prepare-data"):
        assert "== Config ==" in _run([str(bin_dir / name), "--help"], tmp_path, env).stdout
    for name in ("nmtbench-average-checkpoints", "nmtbench-report"):
        assert "usage:" in _run([str(bin_dir / name), "--help"], tmp_path, env).stdout
    assert list(tmp_path.iterdir()) == []  # composing writes nothing


def test_installed_package_trains_the_smoke_experiment(installed, tmp_path):
    """A few steps of the (shrunk) smoke run, end to end, from the installed wheel."""
    bin_dir, _, env = installed
    _run([str(bin_dir / "nmtbench-train"), *TINY, "hydra.run.dir=run"], tmp_path, env)
    assert (tmp_path / "run" / "results.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
