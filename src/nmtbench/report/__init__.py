"""The comparison table: our runs' results.json files beside the published WMT14 En->De rows.

    python scripts/report.py runs/table_mini/ --out runs/table_mini/report
    python scripts/report.py runs/a runs/b --out report/        # or: python -m nmtbench.report ...

Inputs: each run directory's `results.json` (docs/results_schema.md, schema 1.x, validated on
load; a 1.1 field a 1.0 file lacks is shown as "—" with a note) and its `config.yaml`; when
results.json holds no validation curve, the run's TensorBoard scalars (`val/bleu` mapped to
hours with `time/train_hours`). Published rows come from `nmtbench/published_results.yaml`:
the numbers live there, not here.

Outputs in --out:
    table.md                      markdown table (ours + published, grouped by model family) + notes
    table.csv                     the same rows, raw numbers: the fields of `Row`, one row per line
    bleu_vs_wallclock.png         validation BLEU vs wall-clock (minutes under 2 h), every seed
    bleu_vs_gpu_hours.png         final BLEU vs GPU-hours, ours + published (log x)
    throughput.png                tokens/s and mean GPU utilisation per row (n/a on CPU)
    train_loss_vs_wallclock.png   training loss vs wall-clock (only when TensorBoard logs exist)
    runs.json                     the run directories read

Two BLEUs, never mixed up: "tok. BLEU" is tokenized BLEU as the papers computed it (published
rows: the number printed in the paper; ours: sacreBLEU over Moses-tokenized text with compound
splitting); "sacreBLEU" is detokenized sacreBLEU on the raw references, which none of the
papers reports. Our test BLEU is the averaged checkpoint's when the run tested one.

Modules: rows (the Row dataclass, published rows, order), runs (results.json -> Row, seeds
merged), describe and curves (their helpers), table (markdown + CSV), plots, cli.
"""

from nmtbench.report.cli import main, write_report
from nmtbench.report.curves import curves_from_tensorboard
from nmtbench.report.rows import ReportError, Row, csv_fields, load_published, order_rows
from nmtbench.report.runs import find_results, load_runs, merge_seeds, read_results, setting_digest
from nmtbench.report.table import CSV_COLUMNS, MARKDOWN_HEADER, render_markdown, write_csv

__all__ = ["CSV_COLUMNS", "MARKDOWN_HEADER", "ReportError", "Row", "csv_fields", "curves_from_tensorboard",
           "find_results", "load_published", "load_runs", "main", "merge_seeds", "order_rows",
           "read_results", "render_markdown", "setting_digest", "write_csv", "write_report"]
