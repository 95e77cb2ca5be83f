"""The one thing pyproject.toml cannot say: the package list is computed, because the Hydra
configs (configs/ at the repository root, the one copy) ship as the package
`nmtbench.configs`, one subpackage per config group (package-dir in pyproject.toml)."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).resolve().parent
config_groups = sorted(
    "nmtbench.configs." + ".".join(d.relative_to(here / "configs").parts)
    for d in (here / "configs").rglob("*") if d.is_dir() and "__pycache__" not in d.parts
)
setup(packages=[*find_packages(str(here / "src")), "nmtbench.configs", *config_groups])
