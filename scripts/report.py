"""Comparison table + plots from runs' results.json files, with the published rows beside ours.

    python scripts/report.py runs/table_mini/ --out runs/table_mini/report
    python scripts/report.py runs/mini_transformer/2026-01-01_12-00-00 runs/other_run --out report/

Each argument is a run directory (holding results.json), a results.json file, or a directory
whose sub-directories are runs. Writes table.md, table.csv and PNG plots into --out
(see the nmtbench.report package for what each holds). An invalid or missing input is one
line on stderr naming the file and the fix, and exit status 1.
"""

import sys

from nmtbench.report import main

if __name__ == "__main__":
    sys.exit(main())
