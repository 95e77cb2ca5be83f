"""Validation BLEU and training-loss curves from a run's TensorBoard events: the fallback
for a results.json without a val_curve, and the only source of the loss curve."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def tensorboard_scalars(run_dir: Path, tags: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the run's TensorBoard event files ({} without any)."""
    event_files = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not event_files:
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    out: dict[str, list[tuple[int, float]]] = {}
    for directory in sorted({f.parent for f in event_files}):
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception as exc:  # a damaged event file costs its curve, not the report
            log.warning("Could not read TensorBoard events in %s: %s", directory, exc)
            continue
        available = set(acc.Tags().get("scalars", []))
        for tag in tags:
            if tag in available:
                out.setdefault(tag, []).extend((e.step, float(e.value)) for e in acc.Scalars(tag))
    return {tag: sorted(points) for tag, points in out.items()}


def _hours_at(steps: Sequence[int], clock: Sequence[tuple[int, float]]) -> list[float]:
    """Wall-clock hours at each step, linearly interpolated from (step, hours) samples."""
    import numpy as np

    xs = np.array([s for s, _ in clock], dtype=float)
    ys = np.array([h for _, h in clock], dtype=float)
    return [float(v) for v in np.interp(np.asarray(steps, dtype=float), xs, ys)]


def curves_from_tensorboard(run_dir: Path) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    """(val curve [{step, hours, bleu}], train loss [(hours, loss)]) from TensorBoard, or empty."""
    scalars = tensorboard_scalars(run_dir, ["val/bleu", "train/loss", "time/train_hours"])
    clock = scalars.get("time/train_hours")
    if not clock:
        return [], []
    val = scalars.get("val/bleu", [])
    val_curve = [{"step": s, "hours": h, "bleu": b}
                 for (s, b), h in zip(val, _hours_at([s for s, _ in val], clock))]
    loss = scalars.get("train/loss", [])
    loss_curve = list(zip(_hours_at([s for s, _ in loss], clock), [v for _, v in loss]))
    return val_curve, loss_curve
