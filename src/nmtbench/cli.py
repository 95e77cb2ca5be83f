"""Command-line entry points, implemented once.

The console scripts of an installed package (`[project.scripts]` in pyproject.toml) and the
`scripts/*.py` files of a checkout call the same functions:

| console script                  | checkout                          | function                |
|---------------------------------|-----------------------------------|-------------------------|
| `nmtbench-train`                | `python scripts/train.py`         | `train`                 |
| `nmtbench-prepare-data`         | `python scripts/prepare_data.py`  | `prepare_data`          |
| `nmtbench-evaluate`             | `python scripts/evaluate.py`      | `evaluate`              |
| `nmtbench-translate`            | `python scripts/translate.py`     | `translate`             |
| `nmtbench-average-checkpoints`  | `python scripts/average_checkpoints.py` | `average_checkpoints` |
| `nmtbench-report`               | `python scripts/report.py`        | `nmtbench.report.main`  |

The first four are Hydra apps: they take the same overrides (`nmtbench-train experiment=smoke`,
`--cfg job`, `--help`, `-m`). Their configs are the repository's `configs/` directory, which
the wheel ships as `nmtbench/configs` (see `config_dir`). Errors users can act on
(`NmtbenchError`) end the command with a one-line message and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nmtbench.errors import NmtbenchError
from nmtbench.overrides import exit_on_unknown_overrides
from nmtbench.schema import register_configs

_PACKAGE_DIR = Path(__file__).resolve().parent


def config_dir() -> Path:
    """The Hydra config directory: `nmtbench/configs` in an installed wheel, else the
    `configs/` directory at the root of the source checkout this package runs from (an
    editable install or `PYTHONPATH=src`). There is one copy, `configs/` in the repository;
    the wheel build maps it to the `nmtbench.configs` package (pyproject.toml)."""
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parents[1] / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"nmtbench's Hydra configs are missing: neither {_PACKAGE_DIR / 'configs'} (installed "
        f"package) nor {_PACKAGE_DIR.parents[1] / 'configs'} (source checkout) has train.yaml. "
        "Reinstall the package (pip install nmtbench) or run from a full checkout."
    )


CONFIG_DIR = str(config_dir())


def _exit_with(exc: NmtbenchError) -> None:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(1)


# -- Hydra apps ------------------------------------------------------------------------------
# Each console script is a plain function (its return value becomes the exit status), calling
# the Hydra-decorated task function, which reads the overrides from sys.argv.


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train(cfg: DictConfig) -> float | None:
    from nmtbench.train import train as run_train

    try:
        metrics = run_train(cfg)
    except NmtbenchError as exc:
        _exit_with(exc)
    # Returned for Hydra sweepers (e.g. Optuna) that optimise a scalar.
    return metrics.get("val/best_bleu")


def train() -> None:
    """Train (and test) a model: `nmtbench-train experiment=smoke` (configs/train.yaml)."""
    register_configs()  # the structured-config schemas configs/model and configs/data build on
    exit_on_unknown_overrides(CONFIG_DIR, "train")  # a misspelled key: named, with the closest ones
    _train()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _prepare_data(cfg: DictConfig) -> None:
    from nmtbench.data.prepare import prepare

    try:
        prepared = prepare(cfg.data)
    except NmtbenchError as exc:
        _exit_with(exc)
    print(prepared.dir)


def prepare_data() -> None:
    """Build (or reuse) the tokenizer + shard cache of a data config; takes the overrides of
    `train` (`nmtbench-prepare-data data=toy`). Hydra's log directory is
    runs/prepare_data/<time>/ unless `task_name=` is given."""
    if not any(arg.startswith("task_name=") for arg in sys.argv[1:]):
        sys.argv.append("task_name=prepare_data")
    register_configs()
    exit_on_unknown_overrides(CONFIG_DIR, "train")
    _prepare_data()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def _evaluate(cfg: DictConfig) -> float:
    from nmtbench.evaluate import evaluate as run_evaluate

    try:
        scores = run_evaluate(cfg)
    except NmtbenchError as exc:
        _exit_with(exc)
    return scores["sacrebleu"]


def evaluate() -> None:
    """Beam-search the test split of a checkpoint and score it:
    `nmtbench-evaluate ckpt_path=...` (configs/evaluate.yaml)."""
    exit_on_unknown_overrides(CONFIG_DIR, "evaluate")
    _evaluate()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="translate")
def _translate(cfg: DictConfig) -> None:
    from nmtbench.evaluate import translate as run_translate

    try:
        run_translate(cfg)  # the checkpoint alone: its tokenizer is inside
    except NmtbenchError as exc:
        _exit_with(exc)


def translate() -> None:
    """Translate stdin or `input=FILE` with a checkpoint:
    `echo "A test ." | nmtbench-translate ckpt_path=... beam_size=4` (configs/translate.yaml)."""
    exit_on_unknown_overrides(CONFIG_DIR, "translate")
    _translate()


# -- argparse apps ---------------------------------------------------------------------------

AVERAGE_CHECKPOINTS_HELP = """\
Average the weights of the last N checkpoints of a run into one loadable checkpoint
(Vaswani et al. 2017, section 6.1: the last 5 checkpoints).

"Last" means the N checkpoints with the highest training step among those the run kept:
with the default callbacks (configs/callbacks/default.yaml) that is the top 5 by val/bleu;
the vaswani2017_* rows also keep the last 5 (base) / 20 (big) periodic checkpoints in
<run>/checkpoints/periodic, which is what the paper averaged.

examples:
  %(prog)s runs/train/<date> [-n 5] [-o averaged.ckpt]
  %(prog)s runs/vaswani2017_base/<date>/checkpoints/periodic -n 5
  %(prog)s a.ckpt b.ckpt c.ckpt -o averaged.ckpt
then: evaluate ckpt_path=<checkpoint dir>/averaged.ckpt
"""


def average_checkpoints(argv: list[str] | None = None) -> int:
    """Average checkpoints (see AVERAGE_CHECKPOINTS_HELP); returns the exit status."""
    from nmtbench.checkpoints import last_checkpoints, save_averaged

    parser = argparse.ArgumentParser(description=AVERAGE_CHECKPOINTS_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="a run directory (or checkpoint directory), or .ckpt files")
    parser.add_argument("-n", "--num", type=int, default=5,
                        help="how many of a run's last checkpoints (default 5)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output .ckpt (default: <checkpoint dir>/averaged.ckpt)")
    args = parser.parse_args(argv)

    if len(args.inputs) == 1 and args.inputs[0].is_dir():
        try:
            paths = last_checkpoints(args.inputs[0], args.num)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    else:
        paths = args.inputs
        missing = [p for p in paths if not p.is_file()]
        if missing:
            print(f"error: no such checkpoint: {missing[0]}", file=sys.stderr)
            return 1
    output = args.output or paths[-1].parent / "averaged.ckpt"
    try:
        save_averaged(paths, output)
    except NmtbenchError as exc:  # unreadable, or checkpoints of different models/tokenizers
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"averaged {len(paths)} checkpoints -> {output}")
    for p in paths:
        print(f"  {p}")
    return 0
