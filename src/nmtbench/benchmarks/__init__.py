"""Benchmarks behind `scripts/benchmark.py`: each module has `add_arguments(parser)` + `run(args)`."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


def shared_data(name: str) -> Path:
    """`shared/data/<name>` in the nearest directory above the repository that has it (the
    checkout's sibling `../shared` for the main checkout, further up for a worktree)."""
    for parent in (REPO_ROOT, *REPO_ROOT.parents):
        candidate = parent / "shared" / "data" / name
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data" / name
