"""table.md and table.csv from Rows.

table.md: one markdown row per Row, grouped by model family, a "—" plus a numbered note
for every missing value (the note says why). table.csv: the Row fields themselves
(`rows.csv_fields`), raw numbers, one Row per line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nmtbench.report.rows import FRACTIONS, Row, csv_fields

MISSING = "—"

MARKDOWN_HEADER = ["Model", "Params", "Test set", "tok. BLEU (paper-style)", "sacreBLEU (detok.)",
                   "Tested weights", "Train wall-clock", "To 90 / 95 / 99% of best val BLEU",
                   "Time to target val BLEU", "GPU-hours", "Hardware", "GPU util", "MFU", "Tokens/s",
                   "Source"]

METRIC_1_0 = ("this results.json (schema 1.0) does not name the metric of its BLEU targets; the "
              "1.0 writer compared val/bleu (greedy detokenized sacreBLEU on the validation set)")


# ---------------------------------------------------------------------------- formatting
def fmt_params(n: int | None) -> str | None:
    if n is None:
        return None
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M" if n < 1e8 else f"{n / 1e6:.0f}M"
    return f"{n / 1e3:.0f}K"


def fmt_hours(hours: float | None) -> str | None:
    if hours is None:
        return None
    if hours < 1.0:
        return f"{hours * 60:.1f} min"
    if hours < 48.0:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def fmt_number(x: float | None, digits: int = 0) -> str | None:
    if x is None:
        return None
    if digits == 0 and abs(x) >= 100:
        return f"{x:,.0f}"
    if digits == 0:
        return f"{x:.3g}"
    return f"{x:,.{digits}f}"


def fmt_range(value: float | None, rng: tuple[float, float] | None, fmt: Callable[[float], str]) -> str | None:
    """'low–high' for a range, else fmt(value); None stays None."""
    if value is None:
        return None
    if rng is not None:
        return f"{fmt(rng[0])}–{fmt(rng[1])}"
    return fmt(value)


def _fmt_gpu_hours(hours: float) -> str:
    return fmt_number(hours, 0 if hours >= 10 else 2) or ""


def fmt_percent(x: float | None, scale: float = 1.0) -> str | None:
    return None if x is None else f"{x * scale:.1f}%"


def fmt_seeds(row: Row) -> str:
    """', 2 seeds' for a row merging seeds ('2 runs' when seeds repeat), '' for one run."""
    n = len(row.members)
    if n < 2:
        return ""
    return f", {n} seeds" if len(set(row.seeds)) == n else f", {n} runs"


def fmt_bleu(value: float | None, rng: tuple[float, float] | None, row: Row) -> str | None:
    """'27.1', or for seeds '27.1 (26.8–27.4), 2 seeds'."""
    if value is None:
        return None
    text = f"{value:.1f}"
    if rng is not None:
        text += f" ({rng[0]:.1f}–{rng[1]:.1f})"
    return text + fmt_seeds(row)


def fmt_fractions(row: Row) -> str | None:
    """'2.1 / 3.4 / 6.0 min': wall-clock to 90, 95, 99% of the best validation BLEU."""
    hours = [row.time_to_fraction(f) for f in FRACTIONS]
    known = [h for h in hours if h is not None]
    if not known:
        return None
    scale, unit = (60.0, "min") if max(known) < 2.0 else (1.0, "h")
    return " / ".join(MISSING if h is None else f"{h * scale:.1f}" for h in hours) + f" {unit}"


class Notes:
    """Numbered notes: the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def fmt_targets(row: Row, notes: Notes) -> str | None:
    """'≥25 val/bleu: 5.1 min; ≥27.3 val/bleu: not reached' (seeds: '(1/2 seeds)')."""
    parts = []
    for t in row.time_to_targets:
        metric = t["metric"] or f"val/bleu? {notes.ref(METRIC_1_0)}"
        when = fmt_hours(t["hours"]) if t["reached"] and t["hours"] is not None else "not reached"
        if t["of"] > 1:
            when += f" ({t['reached']}/{t['of']} seeds)"
        parts.append(f"≥{t['target']:g} {metric}: {when}")
    return "; ".join(parts) or None


def _cell(row: Row, attr: str, text: str | None, notes: Notes) -> str:
    """Formatted value, or "—" (or "n/a" for GPU fields of CPU runs) with a numbered note."""
    if text is not None:
        return text
    reason = row.null_reasons.get(attr)
    missing = "n/a" if (attr in ("gpu_util_mean", "gpu_hours") and row.accelerator == "cpu") else MISSING
    return f"{missing} {notes.ref(reason)}" if reason else missing


def table_cells(row: Row, notes: Notes) -> list[str]:
    """The markdown cells of one row (see `MARKDOWN_HEADER`)."""
    model = f"**{row.system}**" if row.kind == "ours" else row.system
    if row.notes:
        model += " " + " ".join(notes.ref(n) for n in row.notes)
    paper_bleu = fmt_bleu(row.paper_bleu, row.paper_bleu_range, row)
    sacre = fmt_bleu(row.sacrebleu, row.sacrebleu_range, row)
    if sacre is not None and row.sacrebleu_signature:
        sacre += " " + notes.ref(f"sacreBLEU signature: `{row.sacrebleu_signature}`")
    if paper_bleu is not None and row.kind == "ours" and row.paper_bleu_signature:
        paper_bleu += " " + notes.ref(f"tokenized BLEU (ours): `{row.paper_bleu_signature}`")
    fractions = fmt_fractions(row)
    if fractions is not None:
        fractions += " " + notes.ref(
            f"Wall-clock (validation included) from the start of training to the first validation whose "
            f"{row.fraction_metric or 'val/bleu'} reached 90 / 95 / 99% of the run's best value of it.")
    wall = row.wall_clock_text if row.kind == "published" and row.wall_clock_text else fmt_hours(row.wall_clock_hours)
    gpu_hours = fmt_range(row.gpu_hours, row.gpu_hours_range, _fmt_gpu_hours)
    if gpu_hours is None and row.accelerator == "cpu" and row.device_hours is not None:
        gpu_hours = f"n/a (CPU: {_fmt_gpu_hours(row.device_hours)} device-h)"
    tokens = row.tokens_per_sec_text or fmt_number(row.tokens_per_sec)
    return [
        model,
        _cell(row, "num_parameters", fmt_params(row.num_parameters), notes),
        _cell(row, "test_set", row.test_set, notes),
        _cell(row, "paper_bleu", paper_bleu, notes),
        _cell(row, "sacrebleu", sacre, notes),
        _cell(row, "test_weights", row.test_weights, notes),
        _cell(row, "wall_clock_hours", wall, notes),
        _cell(row, "time_to_90_hours", fractions, notes),
        _cell(row, "time_to_targets", fmt_targets(row, notes), notes),
        _cell(row, "gpu_hours", gpu_hours, notes),
        row.hardware or MISSING,
        _cell(row, "gpu_util_mean", fmt_percent(row.gpu_util_mean), notes),
        _cell(row, "mfu", fmt_percent(row.mfu, 100.0), notes),
        _cell(row, "tokens_per_sec", tokens, notes),
        f"[{row.source}]({row.url})" if row.url else row.source,
    ]


def render_markdown(rows: Sequence[Row], families: dict[str, str]) -> str:
    """The table and its notes as markdown."""
    notes = Notes()
    lines = [
        "# WMT14 En→De: recurrent seq2seq vs Transformer — published results and our runs",
        "",
        "| " + " | ".join(MARKDOWN_HEADER) + " |",
        "|" + "|".join("---" for _ in MARKDOWN_HEADER) + "|",
    ]
    current = None
    for row in rows:
        if row.family != current:
            current = row.family
            lines.append("| *" + families.get(current, current) + "* |" + " |" * (len(MARKDOWN_HEADER) - 1))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in table_cells(row, notes)) + " |")
    test_sets = {r.test_set for r in rows if r.test_set}
    lines += [
        "",
        "**Which BLEU is which.** *tok. BLEU (paper-style)*: for published rows, the number printed in "
        "the paper — tokenized, case-sensitive BLEU (multi-bleu.perl on Moses-tokenized text; "
        "Vaswani et al. 2017 and GNMT also split hyphenated compounds; Luong et al. 2015 score a "
        "2737-sentence filtered newstest2014); for our rows, sacreBLEU on Moses-tokenized "
        "hypotheses and references with the same compound splitting (signature in the notes). "
        "*sacreBLEU (detok.)*: detokenized sacreBLEU on the raw references (ours only; signature "
        "in the notes). Our test decoding is beam search (beam and length penalty per experiment "
        "file). *Tested weights* says which weights each test BLEU is of: ours prefer the "
        "averaged checkpoint when the run tested one (results.json `test_evaluations`).",
        "",
        "**Seeds.** Runs of one experiment whose configs differ only in the seed share a row: "
        "the mean, the lowest–highest seed in brackets, and the number of seeds; every seed's "
        "curve is in the BLEU-vs-wall-clock plot.",
        "",
        "**Wall-clock** is training time (validation included); **To 90 / 95 / 99%** is the "
        "wall-clock to the first validation within 90, 95, 99% of the run's best validation BLEU "
        "(comparable across rows at any scale); **Time to target** is to the first validation at "
        "or above each configured target, on the metric named; **GPU-hours** = wall-clock × GPUs "
        "(n/a for CPU runs: their device-hours = wall-clock × processes are shown instead); "
        "**MFU** = analytic training FLOPs / (time × devices × peak FLOP/s); **Tokens/s** = "
        "source + target training tokens per second, all devices.",
    ]
    if len(test_sets) > 1:
        lines += ["", "**Test sets differ** between rows (" + ", ".join(sorted(test_sets)) + "): "
                  "BLEU is only comparable between rows on the same test set."]
    if notes.texts:
        lines += ["", "**Notes**", ""]
        lines += [f"{i}. {text}" for i, text in enumerate(notes.texts, start=1)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- CSV
CSV_COLUMNS = csv_fields()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, tuple):  # a (low, high) range
        return "-".join(f"{v:g}" for v in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return value


def csv_record(row: Row) -> dict[str, Any]:
    """One CSV line: the Row's fields (dataclasses.fields) less the plot-only ones."""
    record = {f.name: getattr(row, f.name) for f in dataclasses.fields(row) if f.name in CSV_COLUMNS}
    return {k: _csv_value(v) for k, v in record.items()}


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(csv_record(row))
