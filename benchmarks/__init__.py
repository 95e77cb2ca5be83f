"""The benchmarks, beside their results (RESULTS.md): `python -m benchmarks <cmd>` from the
repository root. Each subcommand's module has `add_arguments(parser)` + `run(args)`; the
timing helper they share is `benchmarks.timing`. Not part of the installed package (the
wheel ships `nmtbench` only)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data(name: str) -> Path:
    """`shared/data/<name>` in the nearest directory above the repository that has it (the
    checkout's sibling `../shared` for the main checkout, further up for a worktree)."""
    for parent in (REPO_ROOT, *REPO_ROOT.parents):
        candidate = parent / "shared" / "data" / name
        if candidate.is_dir():
            return candidate
    return REPO_ROOT.parent / "shared" / "data" / name
