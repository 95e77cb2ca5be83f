"""Benchmarks that print numbers and ratios (never timed tests). From the repository root:

    python -m benchmarks data         # preprocessing pairs/s and loader vs model tokens/s
    python -m benchmarks decode       # beam-4 sentences/s, cache vs no cache, vs HF generate()
    python -m benchmarks lstm         # tokens/s of the LSTM decoder with/without input feeding
    python -m benchmarks plateau      # does the mini Transformer leave the unigram plateau (WMT14 sample)
    python -m benchmarks scaling      # tokens/s with 1 and 2 processes, scaling efficiency
    python -m benchmarks seq-length   # LSTM vs Transformer encoder time over sequence length
    python -m benchmarks train-throughput  # training tokens/s: ours vs HF MarianMT / OpenNMT-py

Each subcommand lives in benchmarks/<name>.py as `add_arguments(parser)` + `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "data": "benchmarks.data",
    "decode": "benchmarks.decode",
    "lstm": "benchmarks.lstm",
    "plateau": "benchmarks.plateau",
    "scaling": "benchmarks.scaling",
    "seq-length": "benchmarks.seq_length",
    "train-throughput": "benchmarks.train_throughput",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        modules[name] = module
        sp = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(sp)
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
