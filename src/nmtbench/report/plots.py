"""The report's PNG plots (matplotlib, Agg backend).

Wall-clock axes are in minutes when the longest run is under 2 hours (the CPU-budget mini
rows), in hours otherwise. A row merging seeds draws one curve per seed, in one colour (a line
style per seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nmtbench.report.rows import Row

MINUTES_BELOW_HOURS = 2.0


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def time_axis(longest_hours: float) -> tuple[float, str]:
    """(multiplier, unit) for a wall-clock axis: minutes for runs under 2 hours."""
    return (60.0, "minutes") if longest_hours < MINUTES_BELOW_HOURS else (1.0, "hours")


def _seed_label(row: Row, run: Row) -> str:
    return f"{row.name} (seed {run.seeds[0]})" if row.members and run.seeds else row.name


def plot_bleu_vs_time(ours: Sequence[Row], path: Path) -> tuple[str, list[str]]:
    """Validation BLEU against wall-clock, one curve per run (every seed of a merged row).
    Returns (axis unit, curve labels)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = []  # (row index, seed index within the row, label, points)
    for i, row in enumerate(ours):
        for j, run in enumerate(row.runs()):
            points = sorted((p["hours"], p["bleu"]) for p in run.val_curve if p.get("hours") is not None)
            if points:
                curves.append((i, j, _seed_label(row, run), points))
    scale, unit = time_axis(max((points[-1][0] for *_, points in curves), default=0.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")  # the seeds of a row: one colour, one line style each
    for i, j, label, points in curves:
        hours, bleu = zip(*points)
        ax.plot([h * scale for h in hours], bleu, marker="o", markersize=3, label=label,
                color=colours[i % len(colours)], linestyle=styles[j % len(styles)])
    if not curves:
        ax.text(0.5, 0.5, "no validation BLEU recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"training wall-clock ({unit}, validation included)")
    ax.set_ylabel("validation sacreBLEU")
    ax.set_title("Validation BLEU vs wall-clock")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return unit, [label for _, _, label, _ in curves]


def plot_bleu_vs_gpu_hours(rows: Sequence[Row], path: Path) -> None:
    """Final BLEU against GPU-hours (log x): published points (ranges as error bars) and ours.
    CPU runs have no GPU-hours: they are drawn at their device-hours as hollow markers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    drawn, ours_drawn = 0, False
    for row in rows:
        bleu, kind = row.bleu_for_plot
        hours = row.gpu_hours
        cpu = False
        if hours is None and row.kind == "ours" and row.device_hours is not None:
            hours, cpu = row.device_hours, True
        if bleu is None or hours is None or hours <= 0:
            continue
        if row.kind == "published":
            xerr = None
            if row.gpu_hours_range is not None:
                low, high = row.gpu_hours_range
                xerr = [[hours - low], [high - hours]]
            ax.errorbar([hours], [bleu], xerr=xerr, fmt="s", color="0.35", capsize=3)
            ax.annotate(f"{row.name} ({bleu:.1f})", (hours, bleu), textcoords="offset points",
                        xytext=(5, 4), fontsize=7, color="0.25")
        else:
            seeds = f", mean of {len(row.members)}" if row.members else ""
            label = f"{row.name}: {bleu:.1f} {kind}{seeds}{' (CPU device-hours)' if cpu else ''}"
            ax.plot([hours], [bleu], marker="o", linestyle="none", markersize=7, label=label,
                    markerfacecolor="none" if cpu else None)
            ours_drawn = True
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "nothing to plot", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
    ax.set_xlabel("GPU-hours (log; hollow markers: CPU device-hours)")
    ax.set_ylabel("test BLEU (tok./paper-style where available)")
    ax.set_title("BLEU vs training compute (squares: published; circles: ours)")
    if ours_drawn:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_throughput(ours: Sequence[Row], path: Path) -> None:
    """Bars: training tokens/s and mean GPU utilisation per row ("n/a" for CPU runs)."""
    plt = _pyplot()
    names = [r.name for r in ours] or ["(no runs)"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = range(len(names))
    tokens = [r.tokens_per_sec or 0.0 for r in ours] or [0.0]
    ax1.bar(xs, tokens, color="tab:blue")
    for x, row in zip(xs, ours):
        if row.tokens_per_sec is None:
            ax1.text(x, 0, "n/a", ha="center", va="bottom")
    ax1.set_title("training tokens/s (src + tgt, all devices)")
    ax2.set_title("mean GPU utilisation (%)")
    util = [r.gpu_util_mean or 0.0 for r in ours] or [0.0]
    ax2.bar(xs, util, color="tab:green")
    ax2.set_ylim(0, 100)
    for x, row in zip(xs, ours):
        if row.gpu_util_mean is None:
            label = "n/a (CPU)" if row.accelerator == "cpu" else "n/a"
            ax2.text(x, 2, label, ha="center", va="bottom", rotation=90)
    for ax in (ax1, ax2):
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_train_loss(ours: Sequence[Row], path: Path) -> bool:
    """Training loss vs wall-clock from TensorBoard, every seed; False (no file) without data."""
    runs = [(i, row, run) for i, row in enumerate(ours) for run in row.runs() if run.loss_curve]
    if not runs:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scale, unit = time_axis(max(run.loss_curve[-1][0] for _, _, run in runs))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row, run in runs:
        hours, loss = zip(*run.loss_curve)
        ax.plot([h * scale for h in hours], loss, label=_seed_label(row, run), linewidth=1,
                marker="." if len(hours) < 50 else None, color=colours[i % len(colours)])
    ax.set_xlabel(f"training wall-clock ({unit})")
    ax.set_ylabel("train/loss (label-smoothed CE per target token)")
    ax.set_title("Training loss vs wall-clock")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
