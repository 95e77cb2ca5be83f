"""Checkpoints: atomic writes, readable errors, the tokenizer inside, and averaging.

- `AtomicCheckpointIO`: Lightning's `TorchCheckpointIO` writing through a temporary file in
  the checkpoint's own directory, fsynced, then renamed onto the target (a kill during a save
  never leaves a truncated `last.ckpt` where a good one was); reading a truncated or corrupt
  file is a one-line `CheckpointError` that names it.
- `TOKENIZER_KEY`: every checkpoint carries the SentencePiece model (its bytes) and SHA-256
  (`Seq2SeqModule.on_save_checkpoint`), so translating needs only the checkpoint.
- `RNG_KEY`: and every rank's random state (Lightning saves none), so a resumed run draws
  the same dropout masks as an uninterrupted one.
- `check_same_model`, `tokenizer_must_match`: a checkpoint of another model or tokenizer is
  refused with one line naming both (resume, evaluate, averaging).
- `average_checkpoints(paths)` (Vaswani et al. 2017, section 6.1: "averaging the last 5
  checkpoints") averages the `state_dict` of Lightning checkpoints element-wise and returns one
  checkpoint dict that loads like any other (`scripts/evaluate.py ckpt_path=...`), tokenizer
  included. `last_checkpoints(run_dir, n)` picks the N checkpoints of a run with the highest
  `global_step`.

Note: the paper averaged checkpoints written every 10 minutes. A run keeps the checkpoints
its `ModelCheckpoint` callback keeps; to average the *last* N, train with a callback that
keeps them (e.g. `every_n_train_steps` and `save_top_k: -1`).
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from nmtbench.atomic import atomic_file, remove_stale_tmp
from nmtbench.errors import CheckpointError

# Entries of a Lightning checkpoint that describe the training state of one checkpoint and
# are meaningless for an average; they are dropped (the average cannot resume training).
TRAINING_STATE_KEYS = ("optimizer_states", "lr_schedulers", "loops", "callbacks")
# {"type": "sentencepiece", "model": bytes, "sha256": str, "vocab_size": int}
TOKENIZER_KEY = "nmtbench_tokenizer"
# [rng_states() of rank 0, rank 1, ...]: restored by Seq2SeqModule when fit resumes.
RNG_KEY = "nmtbench_rng_states"
# What torch.load raises on a file that is not a (complete) checkpoint.
UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
              AttributeError, ImportError, IndexError, KeyError, TypeError, OSError)


def _unreadable(path: _PATH, exc: BaseException) -> CheckpointError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    return CheckpointError(
        f"{path} is not a readable checkpoint ({size:,} bytes; {type(exc).__name__}: {reason}): "
        "it is truncated or corrupt. Use another checkpoint of the run (e.g. a step*.ckpt next "
        "to it), or start again with ckpt_path=null."
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint (our own files: full unpickling) onto the CPU.

    A missing file, or one that is truncated, corrupt or not a checkpoint, is a
    `CheckpointError` naming it."""
    if not Path(path).is_file():
        raise CheckpointError(f"ckpt_path={path} does not exist (pass a .ckpt file of a run).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except UNREADABLE as exc:
        raise _unreadable(path, exc) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' in it).")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose saves are atomic and whose load errors name the file.

    Lightning's own save goes through fsspec, which writes to the system temp directory and
    *moves* the file: across filesystems that is a copy into the target, which a kill can
    truncate. Here the temporary file lives next to the target and one `os.replace` swaps it
    in; temporary files of killed writers are removed at the next save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options")
        with atomic_file(path) as f:
            torch.save(checkpoint, f)
        remove_stale_tmp(str(Path(path).parent))

    def load_checkpoint(self, path: _PATH, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise CheckpointError(f"ckpt_path={path} does not exist (pass a .ckpt file of a run, or ckpt_path=last).")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except UNREADABLE as exc:
            if "Weights only load failed" in str(exc) and zipfile.is_zipfile(path):
                raise  # a whole file holding an object torch's safe loader does not allow
            raise _unreadable(path, exc) from exc


def rng_states() -> dict[str, Any]:
    """This process's random states (torch CPU and CUDA, numpy, Python)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {  # tensors and plain Python values only: loadable with torch.load(weights_only=True)
        "torch": torch.get_rng_state(),
        "torch.cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's `rng_states()`, in rank order (a collective when `world_size > 1`: Lightning
    builds a checkpoint on every rank at once)."""
    own = rng_states()
    if world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [own]
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, own)
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("torch.cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_tokenizer(ckpt: dict[str, Any]):
    """The `Tokenizer` stored in a checkpoint, or None (checkpoints written before it was)."""
    from nmtbench.data.tokenizer import Tokenizer

    saved = ckpt.get(TOKENIZER_KEY)
    if not saved:
        return None
    tokenizer = Tokenizer.from_bytes(saved["model"])
    if tokenizer.sha256 != saved["sha256"]:
        raise CheckpointError(
            f"The tokenizer stored in the checkpoint does not match its recorded hash "
            f"({tokenizer.sha256[:12]} vs {saved['sha256'][:12]}): the checkpoint is corrupt."
        )
    return tokenizer


RESUME_FIX = ("Resume with the data settings the checkpoint was trained with (same data.* and cache), "
              "or start a new run (ckpt_path=null).")


def tokenizer_must_match(saved, data, fix: str = RESUME_FIX) -> None:
    """The data's tokenizer must be the checkpoint's (same SentencePiece model); `fix` says what to do."""
    if saved.sha256 != data.sha256:
        raise CheckpointError(
            f"Tokenizer mismatch: the checkpoint was trained with {saved.describe()}, but this run's "
            f"data gives {data.describe()}. {fix}"
        )


def describe_model(cfg: dict[str, Any], checkpoint: dict[str, Any]) -> str:
    """e.g. "transformer (d_model 128, 2+2 layers, vocab 1000)" for error messages."""
    model = cfg.get("model") or {}
    vocab = (checkpoint.get("hyper_parameters") or {}).get("vocab_size")
    keys = ("d_model", "hidden_size", "attention", "num_layers", "num_encoder_layers", "num_decoder_layers")
    details = [f"{k} {model[k]}" for k in keys if model.get(k) is not None]
    details.append(f"vocab {vocab}")
    return f"{model.get('name', '?')} ({', '.join(details)})"


def check_same_model(own_state: dict[str, Any], checkpoint: dict[str, Any], own_hparams: dict[str, Any]) -> None:
    """Refuse a checkpoint of another model (parameter names or shapes differ) with one line
    naming both models, e.g. "transformer (d_model 32, ...) vs this run's transformer (d_model 48, ...)"."""
    theirs = checkpoint.get("state_dict", {})
    missing = [k for k in own_state if k not in theirs]
    unexpected = [k for k in theirs if k not in own_state]
    shapes = [k for k in own_state if k in theirs and tuple(own_state[k].shape) != tuple(theirs[k].shape)]
    if not (missing or unexpected or shapes):
        return
    if shapes:
        k = shapes[0]
        first = f"'{k}' is {tuple(theirs[k].shape)} there, {tuple(own_state[k].shape)} here"
    else:
        first = f"parameter '{(missing or unexpected)[0]}' is {'missing' if missing else 'unexpected'}"
    theirs_cfg = (checkpoint.get("hyper_parameters") or {}).get("cfg") or {}
    raise CheckpointError(
        f"The checkpoint holds another model: {describe_model(theirs_cfg, checkpoint)} vs this "
        f"run's {describe_model(own_hparams['cfg'], {'hyper_parameters': own_hparams})} "
        f"({first}). Resume with the run's own model and data settings, or start a new run "
        "(ckpt_path=null)."
    )


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
    versions, the tokenizer) comes from the last path; optimizer and loop state are dropped.
    All checkpoints must carry the same tokenizer."""
    if not paths:
        raise CheckpointError("average_checkpoints needs at least one checkpoint")
    sums: dict[str, torch.Tensor] = {}
    last: dict[str, Any] = {}
    for i, path in enumerate(paths):
        ckpt = load_checkpoint(path)
        state = ckpt["state_dict"]
        tokenizer_hash = (ckpt.get(TOKENIZER_KEY) or {}).get("sha256")
        if i == 0:
            first_hash = tokenizer_hash
            keys = list(state)
            sums = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in state.items()}
        else:
            if tokenizer_hash != first_hash:
                raise CheckpointError(
                    f"{path} was trained with another tokenizer (sha256 {str(tokenizer_hash)[:12]}) than "
                    f"{paths[0]} (sha256 {str(first_hash)[:12]}): average checkpoints of one run only."
                )
            if list(state) != keys:
                missing = set(keys) ^ set(state)
                raise CheckpointError(f"{path} has different parameters from {paths[0]}: {sorted(missing)[:5]}")
            for k, v in state.items():
                if v.shape != sums[k].shape:
                    raise CheckpointError(f"{path}: '{k}' has shape {tuple(v.shape)}, expected {tuple(sums[k].shape)}")
                if v.is_floating_point():
                    sums[k] += v.double()
                elif not torch.equal(v, sums[k]):
                    raise CheckpointError(f"{path}: non-floating tensor '{k}' differs between checkpoints")
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
    averaged = average_checkpoints(paths)
    with atomic_file(output) as f:
        torch.save(averaged, f)
    return output
