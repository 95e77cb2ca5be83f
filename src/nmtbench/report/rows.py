"""The table row (`Row`), the published rows, and the order of rows in the table.

A Row is flat on purpose: every field but the plot data is one column of table.csv
(`csv_fields`), so the CSV follows this dataclass and cannot drift from it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from nmtbench.errors import NmtbenchError

PUBLISHED_FILENAME = "published_results.yaml"
NOT_REPORTED = "not reported in the paper"
FRACTIONS = (0.9, 0.95, 0.99)  # time_to_fraction_of_best (results.json 1.1)

PLOT_ONLY = {"csv": False}  # field metadata: kept out of table.csv (curves, per-seed rows)


class ReportError(NmtbenchError):
    """An input of the report is missing or invalid; the message names the file and the fix."""


@dataclass
class Row:
    """One line of the table: a published result, one of our runs, or several seeds of one
    of our experiments (`seeds`, `members`: then numbers are means over the seeds and
    `*_range` the lowest and highest seed).

    Numeric fields are None when unknown; `null_reasons[field]` then says why (a numbered
    note in table.md). `*_range` hold (low, high) for values given as a range.
    """

    kind: str  # "published" | "ours"
    family: str  # lstm_seq2seq | lstm_attention | gnmt | transformer | transformer_big | other
    name: str  # published key or our experiment's name
    system: str  # description shown in the Model column
    source: str  # citation or "ours: <run dir>"
    num_parameters: int | None = None
    test_set: str | None = None
    test_num_sentences: int | None = None
    test_weights: str | None = None  # which weights the test BLEU is of: best | last | averaged (N) ...
    paper_bleu: float | None = None
    paper_bleu_range: tuple[float, float] | None = None
    paper_bleu_signature: str | None = None
    sacrebleu: float | None = None
    sacrebleu_range: tuple[float, float] | None = None
    sacrebleu_signature: str | None = None
    best_val_bleu: float | None = None
    best_val_paper_bleu: float | None = None
    # Wall-clock hours (validation included) of the first validation reaching 90 / 95 / 99% of
    # the run's best value of `fraction_metric`.
    time_to_90_hours: float | None = None
    time_to_95_hours: float | None = None
    time_to_99_hours: float | None = None
    fraction_metric: str | None = None
    # time_to_bleu targets: [{target, metric, reached (seeds reaching it), of (seeds), hours}]
    time_to_targets: list[dict[str, Any]] = field(default_factory=list)
    wall_clock_hours: float | None = None
    wall_clock_range: tuple[float, float] | None = None
    wall_clock_text: str | None = None
    gpu_hours: float | None = None
    gpu_hours_range: tuple[float, float] | None = None
    device_hours: float | None = None
    hardware: str | None = None
    accelerator: str | None = None
    gpu_util_mean: float | None = None
    mfu: float | None = None
    tokens_per_sec: float | None = None
    tokens_per_sec_text: str | None = None
    train_flops: float | None = None
    steps: int | None = None
    seeds: list[int] = field(default_factory=list)
    run_dir: str | None = None  # ours: the run directory ("; "-separated for seeds)
    url: str | None = None
    experiments: list[str] = field(default_factory=list)  # published: our experiments re-running it
    notes: list[str] = field(default_factory=list)
    null_reasons: dict[str, str] = field(default_factory=dict)
    val_curve: list[dict[str, Any]] = field(default_factory=list, metadata=PLOT_ONLY)
    loss_curve: list[tuple[float, float]] = field(default_factory=list, metadata=PLOT_ONLY)  # (hours, loss)
    members: list[Row] = field(default_factory=list, metadata=PLOT_ONLY)  # the seeds' own rows

    @property
    def bleu_for_plot(self) -> tuple[float | None, str]:
        """The BLEU that goes on the BLEU-vs-GPU-hours plot and which kind it is."""
        if self.paper_bleu is not None:
            return self.paper_bleu, "tok. BLEU"
        if self.sacrebleu is not None:
            return self.sacrebleu, "sacreBLEU"
        return self.best_val_bleu, "best val sacreBLEU"

    def time_to_fraction(self, fraction: float) -> float | None:
        return getattr(self, f"time_to_{round(fraction * 100)}_hours")

    def runs(self) -> list[Row]:
        """The single runs behind this row: its seeds, or itself."""
        return self.members or [self]


def csv_fields() -> list[str]:
    """The columns of table.csv: every Row field not marked plot-only, in declaration order."""
    return [f.name for f in fields(Row) if f.metadata.get("csv", True)]


# ---------------------------------------------------------------------------- published rows
def _range(value: Any) -> tuple[float | None, tuple[float, float] | None]:
    """A YAML number or [low, high] -> (midpoint or value, (low, high) or None)."""
    if value is None:
        return None, None
    if isinstance(value, (list, tuple)):
        low, high = (float(v) for v in value)
        return (low + high) / 2.0, (low, high)
    return float(value), None


def load_published(path: str | os.PathLike | None = None) -> tuple[dict[str, str], list[Row]]:
    """(family labels, published rows) from published_results.yaml (default: the packaged one)."""
    import yaml

    where = path or f"nmtbench/{PUBLISHED_FILENAME}"
    try:
        if path is None:
            text = resources.files("nmtbench").joinpath(PUBLISHED_FILENAME).read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        families = dict(data.get("families") or {})
        return families, [_published_row(item) for item in data.get("rows") or []]
    except OSError as exc:
        raise ReportError(f"{where}: cannot read it ({exc.strerror}); pass an existing file to "
                          "--published or leave it out for the packaged one") from exc
    except (yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{where}: not a published-results file ({type(exc).__name__}: {exc}); "
                          f"follow the format described at the top of nmtbench/{PUBLISHED_FILENAME}") from exc


def _published_row(item: dict[str, Any]) -> Row:
    wall, wall_range = _range(item.get("wall_clock_hours"))
    gpu, gpu_range = _range(item.get("gpu_hours"))
    row = Row(
        kind="published", family=item["family"], name=item["key"], system=item["system"],
        source=item["citation"], url=item.get("url"),
        num_parameters=item.get("num_parameters"), test_set=item.get("test_set"),
        test_weights=item.get("test_weights"), paper_bleu=item.get("bleu"),
        paper_bleu_signature="as published: tokenized BLEU (multi-bleu.perl)",
        wall_clock_hours=wall, wall_clock_range=wall_range, wall_clock_text=item.get("wall_clock"),
        gpu_hours=gpu, gpu_hours_range=gpu_range, hardware=item.get("hardware"),
        accelerator="gpu", gpu_util_mean=item.get("gpu_util_mean"), mfu=item.get("mfu"),
        tokens_per_sec=item.get("tokens_per_sec"), tokens_per_sec_text=item.get("tokens_per_sec_text"),
        train_flops=item.get("train_flops"), notes=list(item.get("notes") or []),
        experiments=list(item.get("experiments") or []),
    )
    reasons = dict(item.get("null_reasons") or {})
    reasons.setdefault("sacrebleu", "not reported: detokenized sacreBLEU postdates the paper")
    for key in ("num_parameters", "wall_clock_hours", "gpu_hours", "gpu_util_mean", "mfu",
                "tokens_per_sec", "test_weights"):
        if getattr(row, key) is None:
            reasons.setdefault(key, NOT_REPORTED)
    row.null_reasons = {k: v for k, v in reasons.items() if getattr(row, k, None) is None}
    return row


def order_rows(ours: Sequence[Row], published: Sequence[Row], families: dict[str, str]) -> list[Row]:
    """Published rows and ours grouped by family (in the order of `families`), published first."""
    order = list(families) + sorted({r.family for r in ours} - set(families))
    rows: list[Row] = []
    for fam in order:
        rows.extend(r for r in published if r.family == fam)
        rows.extend(r for r in ours if r.family == fam)
    return rows
