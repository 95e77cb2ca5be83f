"""Average the weights of the last N checkpoints of a run into one loadable checkpoint
(Vaswani et al. 2017, section 6.1: the last 5 checkpoints).

    python scripts/average_checkpoints.py runs/train/<date> [-n 5] [-o averaged.ckpt]
    python scripts/average_checkpoints.py a.ckpt b.ckpt c.ckpt -o averaged.ckpt

Then: python scripts/evaluate.py ckpt_path=<run>/checkpoints/averaged.ckpt
"""

import argparse
import sys
from pathlib import Path

from nmtbench.checkpoints import last_checkpoints, save_averaged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="a run directory (or checkpoint directory), or .ckpt files")
    parser.add_argument("-n", "--num", type=int, default=5, help="how many of a run's last checkpoints (default 5)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output .ckpt (default: <checkpoint dir>/averaged.ckpt)")
    args = parser.parse_args(argv)

    if len(args.inputs) == 1 and args.inputs[0].is_dir():
        paths = last_checkpoints(args.inputs[0], args.num)
    else:
        paths = args.inputs
        missing = [p for p in paths if not p.is_file()]
        if missing:
            print(f"error: no such checkpoint: {missing[0]}", file=sys.stderr)
            return 1
    output = args.output or paths[-1].parent / "averaged.ckpt"
    save_averaged(paths, output)
    print(f"averaged {len(paths)} checkpoints -> {output}")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
