"""Benchmarks that print numbers and ratios (never timed tests).

    python scripts/benchmark.py data         # preprocessing pairs/s and loader vs model tokens/s
    python scripts/benchmark.py decode       # beam-4 sentences/s, cache vs no cache, vs HF generate()
    python scripts/benchmark.py lstm         # tokens/s of the LSTM decoder with/without input feeding
    python scripts/benchmark.py scaling      # tokens/s with 1 and 2 processes, scaling efficiency
    python scripts/benchmark.py seq-length   # LSTM vs Transformer encoder time over sequence length
    python scripts/benchmark.py train-throughput  # training tokens/s: ours vs HF MarianMT / OpenNMT-py

Each subcommand lives in nmtbench.benchmarks.<name> as `add_arguments(parser)` + `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "data": "nmtbench.benchmarks.data",
    "decode": "nmtbench.benchmarks.decode",
    "lstm": "nmtbench.benchmarks.lstm",
    "scaling": "nmtbench.benchmarks.scaling",
    "seq-length": "nmtbench.benchmarks.seq_length",
    "train-throughput": "nmtbench.benchmarks.train_throughput",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
