"""The comparison table: our runs' results.json files beside the published WMT14 En->De rows.

    python scripts/report.py runs/table_mini/ --out runs/table_mini/report
    python scripts/report.py runs/a runs/b --out report/

Inputs: each run directory's `results.json` (docs/results_schema.md, validated on load) and,
when the file holds no validation curve, the run's TensorBoard scalars (`val/bleu` mapped to
hours with `time/train_hours`). Published rows come from `published_results.yaml` next to
this file: the numbers live there, not here.

Outputs in --out:
    table.md                  markdown table (ours + published, grouped by model family) + notes
    table.csv                 the same rows, raw numbers (one row per line)
    bleu_vs_hours.png         validation BLEU vs wall-clock hours, one curve per run
    bleu_vs_gpu_hours.png     final BLEU vs GPU-hours, ours + published (log x)
    throughput.png            tokens/s and mean GPU utilisation per run (n/a on CPU)
    train_loss_vs_hours.png   training loss vs wall-clock hours (only when TensorBoard logs exist)

Two BLEUs, never mixed up: "tok. BLEU" is tokenized BLEU as the papers computed it (published
rows: the number printed in the paper; ours: `test_paper_bleu`, sacreBLEU over Moses-tokenized
text with compound splitting); "sacreBLEU" is detokenized sacreBLEU on the raw references
(`test_sacrebleu`, signature in the notes), which none of the papers reports.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS_FILENAME = "results.json"
PUBLISHED_FILENAME = "published_results.yaml"
MISSING = "—"
NOT_REPORTED = "not reported in the paper"

# Columns of table.csv, in order (raw values; ranges written as their midpoint + the text).
CSV_COLUMNS = [
    "kind", "family", "name", "system", "num_parameters", "test_set", "test_num_sentences",
    "paper_bleu", "paper_bleu_signature", "sacrebleu", "sacrebleu_signature", "best_val_bleu",
    "wall_clock_hours", "wall_clock_text", "gpu_hours", "gpu_hours_text", "device_hours",
    "hardware", "accelerator", "gpu_util_mean", "mfu", "tokens_per_sec", "tokens_per_sec_text",
    "train_flops", "steps", "source", "run_dir",
]


# ---------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One line of the table: a published result or one of our runs.

    Numeric fields are None when unknown; `null_reasons[field]` then says why (shown as a
    numbered note). `*_range` hold (low, high) for published values given as a range.
    """

    kind: str  # "published" | "ours"
    family: str  # lstm_seq2seq | lstm_attention | gnmt | transformer | transformer_big | other
    name: str  # published key or our run's name
    system: str  # description shown in the Model column
    source: str  # citation or "ours: <run dir>"
    num_parameters: int | None = None
    test_set: str | None = None
    test_num_sentences: int | None = None
    paper_bleu: float | None = None
    paper_bleu_signature: str | None = None
    sacrebleu: float | None = None
    sacrebleu_signature: str | None = None
    best_val_bleu: float | None = None
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
    run_dir: str | None = None
    url: str | None = None
    experiments: list[str] = field(default_factory=list)  # published: our experiments re-running it
    val_curve: list[dict[str, Any]] = field(default_factory=list)
    loss_curve: list[tuple[float, float]] = field(default_factory=list)  # (hours, train/loss)
    notes: list[str] = field(default_factory=list)
    null_reasons: dict[str, str] = field(default_factory=dict)

    @property
    def bleu_for_plot(self) -> tuple[float | None, str]:
        """The BLEU that goes on the BLEU-vs-GPU-hours plot and which kind it is."""
        if self.paper_bleu is not None:
            return self.paper_bleu, "tok. BLEU"
        if self.sacrebleu is not None:
            return self.sacrebleu, "sacreBLEU"
        return self.best_val_bleu, "best val sacreBLEU"


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

    if path is None:
        text = resources.files("nmtbench").joinpath(PUBLISHED_FILENAME).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    families = dict(data.get("families") or {})
    rows = []
    for item in data.get("rows") or []:
        wall, wall_range = _range(item.get("wall_clock_hours"))
        gpu, gpu_range = _range(item.get("gpu_hours"))
        row = Row(
            kind="published", family=item["family"], name=item["key"], system=item["system"],
            source=item["citation"], url=item.get("url"),
            num_parameters=item.get("num_parameters"), test_set=item.get("test_set"),
            paper_bleu=item.get("bleu"),
            paper_bleu_signature="as published: tokenized BLEU (multi-bleu.perl)",
            wall_clock_hours=wall, wall_clock_range=wall_range, wall_clock_text=item.get("wall_clock"),
            gpu_hours=gpu, gpu_hours_range=gpu_range, hardware=item.get("hardware"),
            accelerator="gpu", gpu_util_mean=item.get("gpu_util_mean"), mfu=item.get("mfu"),
            tokens_per_sec=item.get("tokens_per_sec"), tokens_per_sec_text=item.get("tokens_per_sec_text"),
            train_flops=item.get("train_flops"), notes=list(item.get("notes") or []),
        )
        reasons = dict(item.get("null_reasons") or {})
        reasons.setdefault("sacrebleu", "not reported: detokenized sacreBLEU postdates the paper")
        for key in ("num_parameters", "wall_clock_hours", "gpu_hours", "gpu_util_mean", "mfu", "tokens_per_sec"):
            if getattr(row, key) is None:
                reasons.setdefault(key, NOT_REPORTED)
        row.null_reasons = {k: v for k, v in reasons.items() if getattr(row, k, None) is None}
        row.experiments = list(item.get("experiments") or [])
        rows.append(row)
    return families, rows


# ---------------------------------------------------------------------------- our runs
def find_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """results.json files named by `paths`: a results.json, a run directory holding one, or a
    directory whose sub-directories hold them (e.g. runs/table_mini/). Order is preserved."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / RESULTS_FILENAME).is_file():
            found.append(p / RESULTS_FILENAME)
        elif p.is_dir():
            children = sorted(c / RESULTS_FILENAME for c in p.iterdir() if (c / RESULTS_FILENAME).is_file())
            if not children:
                raise FileNotFoundError(f"{p}: no {RESULTS_FILENAME} in it or in its sub-directories")
            found.extend(children)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return list(dict.fromkeys(found))


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml (written by train.py), or {} when absent."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # a broken config.yaml must not break the report
        log.warning("Could not read %s: %s", path, exc)
        return {}


def model_family(results: dict[str, Any], published: Sequence[Row], families: dict[str, str]) -> str:
    """Which family's rows a run sits with: the published row naming its experiment, else the
    Hydra model choice, else the model config (lstm + attention none = seq2seq)."""
    experiment = results.get("experiment")
    for row in published:
        if experiment and experiment in row.experiments:
            return row.family
    variant = results.get("model_variant")
    if variant in families:
        return variant
    cfg = results.get("model_config") or {}
    if results.get("model_name") == "lstm":
        return "lstm_seq2seq" if cfg.get("attention") == "none" else "lstm_attention"
    if results.get("model_name") == "transformer":
        return "transformer_big" if (cfg.get("d_model") or 0) >= 1024 else "transformer"
    return "other"


def describe_model(results: dict[str, Any]) -> str:
    """Short architecture summary from model_config, e.g. 'transformer 3+3 x 256'."""
    cfg = results.get("model_config") or {}
    name = results.get("model_name", "?")
    if name == "transformer" and "d_model" in cfg:
        return (f"transformer {cfg.get('num_encoder_layers')}+{cfg.get('num_decoder_layers')} layers, "
                f"d_model {cfg['d_model']}")
    if name == "lstm" and "hidden_size" in cfg:
        attention = cfg.get("attention", "?")
        what = "no attention" if attention == "none" else f"{attention}/{cfg.get('attention_score', '?')} attention"
        return f"LSTM {cfg.get('num_layers')} x {cfg['hidden_size']}, {what}"
    return str(name)


def describe_hardware(results: dict[str, Any]) -> str:
    """'8 x NVIDIA H100 80GB HBM3, bf16-mixed' or '1 x CPU, 32-true'."""
    names = results.get("device_names") or [results.get("accelerator", "?")]
    counts = Counter("CPU" if n == "cpu" else n for n in names)
    devices = " + ".join(f"{c} x {n}" for n, c in counts.items())
    nodes = results.get("num_nodes") or 1
    where = f" on {nodes} nodes" if nodes > 1 else ""
    return f"{devices}{where}, {results.get('precision', '?')}"


def describe_test_set(results: dict[str, Any], config: dict[str, Any]) -> str | None:
    """newstest2014 for WMT14 runs, <data dir name>/<test prefix> for files, toy for toy."""
    source = results.get("data_source")
    data = config.get("data") or {}
    if source == "wmt14":
        name = "newstest2014"
    elif source == "files":
        directory = data.get("dir")
        prefix = data.get("test_prefix", "test")
        name = f"{Path(directory).name}/{prefix}" if directory else prefix
    elif source == "toy":
        name = "toy test split"
    else:
        name = source
    n = results.get("test_num_sentences")
    return f"{name} ({n} sent.)" if (name and n) else name


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
        except Exception as exc:
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


def run_row(results: dict[str, Any], run_dir: Path, published: Sequence[Row],
            families: dict[str, str], use_tensorboard: bool = True) -> Row:
    """The table row of one of our runs."""
    config = _run_config(run_dir)
    name = results.get("experiment") or results.get("model_variant") or run_dir.name
    val_curve = list(results.get("val_curve") or [])
    loss_curve: list[tuple[float, float]] = []
    if use_tensorboard:
        tb_val, loss_curve = curves_from_tensorboard(run_dir)
        if not val_curve and tb_val:
            val_curve = tb_val
    reasons = dict(results.get("null_reasons") or {})
    row = Row(
        kind="ours", family=model_family(results, published, families), name=name,
        system=f"{name} (ours): {describe_model(results)}", source=f"ours: {run_dir}",
        num_parameters=results.get("num_parameters"), test_set=describe_test_set(results, config),
        test_num_sentences=results.get("test_num_sentences"),
        paper_bleu=results.get("test_paper_bleu"), paper_bleu_signature=results.get("test_paper_bleu_signature"),
        sacrebleu=results.get("test_sacrebleu"), sacrebleu_signature=results.get("test_sacrebleu_signature"),
        best_val_bleu=results.get("best_val_bleu"),
        wall_clock_hours=results.get("train_hours"), gpu_hours=results.get("gpu_hours"),
        device_hours=results.get("device_hours"), hardware=describe_hardware(results),
        accelerator=results.get("accelerator"), gpu_util_mean=results.get("gpu_util_mean"),
        mfu=results.get("mfu"), tokens_per_sec=results.get("tokens_per_sec"),
        train_flops=results.get("train_flops"), steps=results.get("steps"), run_dir=str(run_dir),
        val_curve=val_curve, loss_curve=loss_curve,
    )
    key_map = {"paper_bleu": "test_paper_bleu", "sacrebleu": "test_sacrebleu",
               "wall_clock_hours": "train_hours", "test_num_sentences": "test_num_sentences"}
    for attr in ("num_parameters", "paper_bleu", "sacrebleu", "wall_clock_hours", "gpu_hours",
                 "gpu_util_mean", "mfu", "tokens_per_sec", "best_val_bleu", "device_hours"):
        if getattr(row, attr) is None:
            row.null_reasons[attr] = reasons.get(key_map.get(attr, attr), "not in results.json")
    if row.test_set is None:
        row.null_reasons["test_set"] = reasons.get("data_source", "unknown data source")
    return row


def load_runs(paths: Iterable[str | os.PathLike], published: Sequence[Row], families: dict[str, str],
              use_tensorboard: bool = True) -> list[Row]:
    """Rows of our runs from results.json files (validated: an invalid file is an error)."""
    from nmtbench.callbacks.results import load_results

    rows = []
    for path in find_results(paths):
        results = load_results(path)
        rows.append(run_row(results, path.parent, published, families, use_tensorboard))
    counts = Counter(r.name for r in rows)
    for row in rows:  # two runs of one experiment: tell them apart by their directory
        if counts[row.name] > 1:
            run_dir = Path(row.run_dir or "")
            tag = f"{row.name} [{run_dir.parent.name}/{run_dir.name}]"
            row.system = row.system.replace(f"{row.name} (ours)", f"{tag} (ours)")
            row.name = tag
    return rows


def order_rows(ours: Sequence[Row], published: Sequence[Row], families: dict[str, str]) -> list[Row]:
    """Published rows and ours grouped by family (in the order of `families`), published first."""
    order = list(families) + sorted({r.family for r in ours} - set(families))
    rows: list[Row] = []
    for fam in order:
        rows.extend(r for r in published if r.family == fam)
        rows.extend(r for r in ours if r.family == fam)
    return rows


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


def fmt_range(value: float | None, rng: tuple[float, float] | None, fmt) -> str | None:
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


class _Notes:
    """Numbered notes: the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def _cell(row: Row, attr: str, text: str | None, notes: _Notes) -> str:
    """Formatted value, or "—" (or "n/a" for GPU fields of CPU runs) with a numbered note."""
    if text is not None:
        return text
    reason = row.null_reasons.get(attr)
    missing = "n/a" if (attr in ("gpu_util_mean", "gpu_hours") and row.accelerator == "cpu") else MISSING
    return f"{missing} {notes.ref(reason)}" if reason else missing


def table_cells(row: Row, notes: _Notes) -> list[str]:
    """The markdown cells of one row (see `MARKDOWN_HEADER`)."""
    model = f"**{row.system}**" if row.kind == "ours" else row.system
    if row.kind == "published" and row.notes:
        model += " " + " ".join(notes.ref(n) for n in row.notes)
    bleu_digits = 1
    paper_bleu = None if row.paper_bleu is None else f"{row.paper_bleu:.{bleu_digits}f}"
    sacre = None if row.sacrebleu is None else f"{row.sacrebleu:.{bleu_digits}f}"
    if sacre is not None and row.sacrebleu_signature:
        sacre += " " + notes.ref(f"sacreBLEU signature: `{row.sacrebleu_signature}`")
    if paper_bleu is not None and row.kind == "ours" and row.paper_bleu_signature:
        paper_bleu += " " + notes.ref(f"tokenized BLEU (ours): `{row.paper_bleu_signature}`")
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
        _cell(row, "wall_clock_hours", wall, notes),
        _cell(row, "gpu_hours", gpu_hours, notes),
        row.hardware or MISSING,
        _cell(row, "gpu_util_mean", fmt_percent(row.gpu_util_mean), notes),
        _cell(row, "mfu", fmt_percent(row.mfu, 100.0), notes),
        _cell(row, "tokens_per_sec", tokens, notes),
        f"[{row.source}]({row.url})" if row.url else row.source,
    ]


MARKDOWN_HEADER = ["Model", "Params", "Test set", "tok. BLEU (paper-style)", "sacreBLEU (detok.)",
                   "Train wall-clock", "GPU-hours", "Hardware", "GPU util", "MFU", "Tokens/s", "Source"]


def render_markdown(rows: Sequence[Row], families: dict[str, str]) -> str:
    """The table and its notes as markdown."""
    notes = _Notes()
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
            label = families.get(current, current)
            lines.append("| *" + label + "* |" + " |" * (len(MARKDOWN_HEADER) - 1))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in table_cells(row, notes)) + " |")
    test_sets = {r.test_set for r in rows if r.test_set}
    lines += [
        "",
        "**Which BLEU is which.** *tok. BLEU (paper-style)*: for published rows, the number printed in "
        "the paper — tokenized, case-sensitive BLEU (multi-bleu.perl on Moses-tokenized text; "
        "Vaswani et al. 2017 and GNMT also split hyphenated compounds; Luong et al. 2015 score a "
        "2737-sentence filtered newstest2014); for our rows, `test_paper_bleu`: sacreBLEU on "
        "Moses-tokenized hypotheses and references with the same compound splitting "
        "(signature in the notes). *sacreBLEU (detok.)*: detokenized sacreBLEU on the raw "
        "references (ours only; signature in the notes). Our test decoding is beam search "
        "(beam and length penalty per experiment file); published Transformer numbers average "
        "the last 5 (base) / 20 (big) checkpoints, ours score the best single checkpoint.",
        "",
        "**Wall-clock** is training time (validation included); **GPU-hours** = wall-clock × GPUs "
        "(n/a for CPU runs: their device-hours = wall-clock × processes are shown instead); **MFU** = analytic training FLOPs / "
        "(time × devices × peak FLOP/s); **Tokens/s** = source + target training tokens per second, "
        "all devices.",
    ]
    if len(test_sets) > 1:
        lines += ["", "**Test sets differ** between rows (" + ", ".join(sorted(test_sets)) + "): "
                  "BLEU is only comparable between rows on the same test set."]
    if notes.texts:
        lines += ["", "**Notes**", ""]
        lines += [f"{i}. {text}" for i, text in enumerate(notes.texts, start=1)]
    return "\n".join(lines) + "\n"


def csv_record(row: Row) -> dict[str, Any]:
    """One CSV line: raw values (None -> empty)."""
    rec = {
        "kind": row.kind, "family": row.family, "name": row.name, "system": row.system,
        "num_parameters": row.num_parameters, "test_set": row.test_set,
        "test_num_sentences": row.test_num_sentences, "paper_bleu": row.paper_bleu,
        "paper_bleu_signature": row.paper_bleu_signature, "sacrebleu": row.sacrebleu,
        "sacrebleu_signature": row.sacrebleu_signature, "best_val_bleu": row.best_val_bleu,
        "wall_clock_hours": row.wall_clock_hours,
        "wall_clock_text": row.wall_clock_text or fmt_hours(row.wall_clock_hours),
        "gpu_hours": row.gpu_hours,
        "gpu_hours_text": fmt_range(row.gpu_hours, row.gpu_hours_range, lambda h: f"{h:g}"),
        "device_hours": row.device_hours, "hardware": row.hardware, "accelerator": row.accelerator,
        "gpu_util_mean": row.gpu_util_mean, "mfu": row.mfu, "tokens_per_sec": row.tokens_per_sec,
        "tokens_per_sec_text": row.tokens_per_sec_text, "train_flops": row.train_flops,
        "steps": row.steps, "source": row.source, "run_dir": row.run_dir,
    }
    return {k: ("" if v is None else v) for k, v in rec.items()}


def write_csv(rows: Sequence[Row], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(csv_record(row))


# ---------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _time_axis(longest_hours: float) -> tuple[float, str]:
    """(multiplier, unit) for a wall-clock axis: minutes for short (CPU-budget) runs."""
    return (60.0, "minutes") if longest_hours < 2.0 else (1.0, "hours")


def plot_bleu_vs_hours(ours: Sequence[Row], path: Path) -> None:
    """Validation BLEU against wall-clock hours, one curve per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = {row.name: sorted((p["hours"], p["bleu"]) for p in row.val_curve if p.get("hours") is not None)
              for row in ours}
    curves = {name: points for name, points in curves.items() if points}
    scale, unit = _time_axis(max((points[-1][0] for points in curves.values()), default=0.0))
    for name, points in curves.items():
        hours, bleu = zip(*points)
        ax.plot([h * scale for h in hours], bleu, marker="o", markersize=3, label=name)
    drawn = len(curves)
    if not drawn:
        ax.text(0.5, 0.5, "no validation BLEU recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"training wall-clock ({unit}, validation included)")
    ax.set_ylabel("validation sacreBLEU")
    ax.set_title("Validation BLEU vs wall-clock")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
            label = f"{row.name}: {bleu:.1f} {kind}{' (CPU device-hours)' if cpu else ''}"
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
    """Bars: training tokens/s and mean GPU utilisation per run ("n/a" for CPU runs)."""
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
    """Training loss vs wall-clock hours from TensorBoard; False (no file) without data."""
    runs = [r for r in ours if r.loss_curve]
    if not runs:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scale, unit = _time_axis(max(row.loss_curve[-1][0] for row in runs))
    for row in runs:
        hours, loss = zip(*row.loss_curve)
        ax.plot([h * scale for h in hours], loss, label=row.name, linewidth=1,
                marker="." if len(hours) < 50 else None)
    ax.set_xlabel(f"training wall-clock ({unit})")
    ax.set_ylabel("train/loss (label-smoothed CE per target token)")
    ax.set_title("Training loss vs wall-clock")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- entry point
def write_report(run_paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 published_path: str | os.PathLike | None = None, use_tensorboard: bool = True,
                 include_published: bool = True) -> dict[str, Path]:
    """Build table.md, table.csv and the plots in `out_dir`; return {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    families, published = load_published(published_path)
    ours = load_runs(run_paths, published, families, use_tensorboard) if run_paths else []
    rows = order_rows(ours, published if include_published else [], families)
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv",
             "bleu_vs_hours.png": out / "bleu_vs_hours.png",
             "bleu_vs_gpu_hours.png": out / "bleu_vs_gpu_hours.png",
             "throughput.png": out / "throughput.png"}
    files["table.md"].write_text(render_markdown(rows, families), encoding="utf-8")
    write_csv(rows, files["table.csv"])
    plot_bleu_vs_hours(ours, files["bleu_vs_hours.png"])
    plot_bleu_vs_gpu_hours(rows, files["bleu_vs_gpu_hours.png"])
    plot_throughput(ours, files["throughput.png"])
    loss_path = out / "train_loss_vs_hours.png"
    if plot_train_loss(ours, loss_path):
        files["train_loss_vs_hours.png"] = loss_path
    (out / "runs.json").write_text(json.dumps([r.run_dir for r in ours], indent=2) + "\n", encoding="utf-8")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of scripts/report.py."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Comparison table (markdown + CSV) and plots from runs' results.json files, "
                    "with the published WMT14 En->De rows beside ours.")
    parser.add_argument("runs", nargs="*", help="run directories, results.json files, or parents of run directories")
    parser.add_argument("--out", required=True, help="output directory (table.md, table.csv, *.png)")
    parser.add_argument("--published", default=None, help="published-results YAML (default: the packaged one)")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not read TensorBoard event files")
    parser.add_argument("--no-published", action="store_true", help="only our runs")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip run paths without a results.json (warn) instead of failing")
    args = parser.parse_args(argv)

    runs = list(args.runs)
    if args.allow_missing:
        kept = []
        for p in runs:
            try:
                find_results([p])
                kept.append(p)
            except FileNotFoundError as exc:
                print(f"warning: skipped {exc}")
        runs = kept
    try:
        files = write_report(runs, args.out, args.published, use_tensorboard=not args.no_tensorboard,
                             include_published=not args.no_published)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 1
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    for path in files.values():
        print(f"wrote {path}")
    return 0


__all__ = ["Row", "load_published", "load_runs", "find_results", "order_rows", "render_markdown",
           "write_csv", "write_report", "main", "CSV_COLUMNS", "MARKDOWN_HEADER"]
