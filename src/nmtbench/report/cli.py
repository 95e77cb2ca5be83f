"""`write_report` (library) and `main` (the command line of scripts/report.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nmtbench.report.plots import (
    plot_bleu_vs_gpu_hours,
    plot_bleu_vs_time,
    plot_throughput,
    plot_train_loss,
)
from nmtbench.report.rows import ReportError, load_published, order_rows
from nmtbench.report.runs import find_results, load_runs
from nmtbench.report.table import render_markdown, write_csv


def write_report(run_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 published_path: str | os.PathLike | None = None, use_tensorboard: bool = True,
                 include_published: bool = True) -> dict[str, Path]:
    """Build table.md, table.csv and the plots in `out_dir`; return {name: path}.
    Raises ReportError (naming the file and the fix) for a missing or invalid input."""
    families, published = load_published(published_path)
    ours = load_runs(run_paths, published, families, use_tensorboard) if run_paths else []
    rows = order_rows(ours, published if include_published else [], families)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out}: cannot create the output directory ({exc.strerror}); "
                          "pass a writable --out") from exc
    files = {name: out / name for name in ("table.md", "table.csv", "bleu_vs_wallclock.png",
                                           "bleu_vs_gpu_hours.png", "throughput.png")}
    files["table.md"].write_text(render_markdown(rows, families), encoding="utf-8")
    write_csv(rows, files["table.csv"])
    plot_bleu_vs_time(ours, files["bleu_vs_wallclock.png"])
    plot_bleu_vs_gpu_hours(rows, files["bleu_vs_gpu_hours.png"])
    plot_throughput(ours, files["throughput.png"])
    loss_path = out / "train_loss_vs_wallclock.png"
    if plot_train_loss(ours, loss_path):
        files["train_loss_vs_wallclock.png"] = loss_path
    run_dirs = [run.run_dir for row in ours for run in row.runs()]
    (out / "runs.json").write_text(json.dumps(run_dirs, indent=2) + "\n", encoding="utf-8")
    return files


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="report.py",
        description="Comparison table (markdown + CSV) and plots from runs' results.json files, "
                    "with the published WMT14 En->De rows beside ours.")
    parser.add_argument("runs", nargs="*", help="run directories, results.json files, or parents of run directories")
    parser.add_argument("--out", required=True, help="output directory (table.md, table.csv, *.png)")
    parser.add_argument("--published", default=None, help="published-results YAML (default: the packaged one)")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not read TensorBoard event files")
    parser.add_argument("--no-published", action="store_true", help="only our runs")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip run paths without a results.json (warn) instead of failing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of scripts/report.py: 0 on success; 1 with one line on stderr naming the file and
    the fix when an input is missing or invalid."""
    args = parse_args(argv)
    runs = list(args.runs)
    if args.allow_missing:
        kept = []
        for p in runs:
            try:
                find_results([p])
                kept.append(p)
            except ReportError as exc:
                print(f"warning: skipped {exc}", file=sys.stderr)
        runs = kept
    try:
        files = write_report(runs, args.out, args.published, use_tensorboard=not args.no_tensorboard,
                             include_published=not args.no_published)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(files["table.md"].read_text(encoding="utf-8"))
    for path in files.values():
        print(f"wrote {path}")
    return 0
