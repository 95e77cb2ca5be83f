"""Checkpoint averaging (Vaswani et al. 2017, section 6.1: "averaging the last 5 checkpoints").

`average_checkpoints(paths)` averages the `state_dict` of Lightning checkpoints element-wise
and returns one checkpoint dict that loads like any other (`Seq2SeqModule.load_from_checkpoint`,
`scripts/evaluate.py ckpt_path=...`). `last_checkpoints(run_dir, n)` picks the N checkpoints
of a run with the highest `global_step`.

Note: the paper averaged checkpoints written every 10 minutes. A run keeps the checkpoints
its `ModelCheckpoint` callback keeps; to average the *last* N, train with a callback that
keeps them (e.g. `every_n_train_steps` and `save_top_k: -1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# Entries of a Lightning checkpoint that describe the training state of one checkpoint and
# are meaningless for an average; they are dropped (the average cannot resume training).
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint (our own files: full unpickling) onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


def find_checkpoints(run_or_dir: str | Path) -> list[Path]:
    """All `*.ckpt` files of a run directory (`<run>/checkpoints/`) or of a directory."""
    root = Path(run_or_dir)
    directory = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    paths = sorted(directory.glob("*.ckpt"))
    if not paths:
        raise FileNotFoundError(f"No *.ckpt files in {directory}")
    return paths


def last_checkpoints(run_or_dir: str | Path, n: int = 5) -> list[Path]:
    """The `n` checkpoints with the highest `global_step`, oldest first. Files with the same
    step (e.g. `last.ckpt` next to `step...ckpt`) count once; averaged checkpoints are skipped."""
    by_step: dict[int, Path] = {}
    for path in find_checkpoints(run_or_dir):
        ckpt = load_checkpoint(path)
        if "averaged_from" in ckpt:  # an earlier average is not a training checkpoint
            continue
        step = int(ckpt.get("global_step", -1))
        if step not in by_step or by_step[step].name == "last.ckpt":  # prefer the step file
            by_step[step] = path
    steps = sorted(by_step)[-n:]
    return [by_step[s] for s in steps]


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Element-wise mean of the `state_dict`s of `paths` (accumulated in float64, cast back to
    each tensor's dtype). Non-floating tensors (counters, int buffers) must be equal in every
    checkpoint and are copied. The rest of the checkpoint (hyper-parameters, `global_step`,
    versions) comes from the last path; optimizer and loop state are dropped."""
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    sums: dict[str, torch.Tensor] = {}
    last: dict[str, Any] = {}
    for i, path in enumerate(paths):
        ckpt = load_checkpoint(path)
        state = ckpt["state_dict"]
        if i == 0:
            keys = list(state)
            sums = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            if list(state) != keys:
                missing = set(keys) ^ set(state)
                raise ValueError(f"{path} has different parameters from {paths[0]}: {sorted(missing)[:5]}")
            for k, v in state.items():
                if v.shape != sums[k].shape:
                    raise ValueError(f"{path}: '{k}' has shape {tuple(v.shape)}, expected {tuple(sums[k].shape)}")
                if v.is_floating_point():
                    sums[k] += v.double()
                elif not torch.equal(v, sums[k]):
                    raise ValueError(f"{path}: non-floating tensor '{k}' differs between checkpoints")
        last = ckpt
    dtypes = {k: v.dtype for k, v in last["state_dict"].items()}
    averaged = {k: (v / len(paths)).to(dtypes[k]) if v.is_floating_point() else v for k, v in sums.items()}
    out = {k: v for k, v in last.items() if k not in TRAINING_STATE_KEYS}
    out["state_dict"] = averaged
    out["averaged_from"] = [str(p) for p in paths]
    return out


def save_averaged(paths: Sequence[str | Path], output: str | Path) -> Path:
    """Average `paths` and write the result to `output` (parent directories created)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(average_checkpoints(paths), output)
    return output
