"""Average the weights of the last N checkpoints of a run into one loadable checkpoint:

    python scripts/average_checkpoints.py runs/train/<date> [-n 5] [-o averaged.ckpt]
    python scripts/average_checkpoints.py a.ckpt b.ckpt c.ckpt -o averaged.ckpt

Then: python scripts/evaluate.py ckpt_path=<run>/checkpoints/averaged.ckpt
The same as the console script `nmtbench-average-checkpoints`: both run
`nmtbench.cli.average_checkpoints` (its --help says which checkpoints are "the last").
"""

import sys

from nmtbench.cli import average_checkpoints as main

if __name__ == "__main__":
    sys.exit(main())
