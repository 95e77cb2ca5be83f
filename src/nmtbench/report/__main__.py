"""`python -m nmtbench.report RUNS... --out DIR` (the same as scripts/report.py)."""

import sys

from nmtbench.report.cli import main

sys.exit(main())
