"""Checkpoint files under faults: a kill during a write, truncated or corrupt files, a
checkpoint of another model or vocabulary, and checkpoints that carry their tokenizer."""

from __future__ import annotations

import shutil
import signal
import textwrap

import pytest
import torch

from nmtbench.checkpoints import TOKENIZER_KEY, AtomicCheckpointIO, load_checkpoint, save_averaged
from nmtbench.errors import CheckpointError
from nmtbench.evaluate import load_module, translate_lines
from nmtbench.train import train

from ..conftest import TINY_TRANSFORMER, tiny_train_config
from .conftest import TRAINED_DATA
from .runner import REPO, env

SLOW_WRITER = textwrap.dedent("""
    import sys, time, torch
    from nmtbench.checkpoints import AtomicCheckpointIO
    path, marker = sys.argv[1], sys.argv[2]
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, path)  # the good one

    def slow_save(obj, f):  # writes half a checkpoint, then hangs: the kill lands mid-write
        f.write(b"PK\\x03\\x04" + b"x" * 100000)
        f.flush()
        open(marker, "w").close()
        time.sleep(120)

    torch.save = slow_save
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, path)
""")


def test_kill9_during_a_checkpoint_write_keeps_the_previous_file(tmp_path, fault_table):
    import subprocess
    import sys
    import time

    path, marker = tmp_path / "ckpts" / "last.ckpt", tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path), str(marker)], cwd=REPO, env=env())
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "writer exited or never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = load_checkpoint(path)  # the previous checkpoint, whole
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.zeros(3))
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")  # the dead writer's
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 3}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # cleaned at the next save
    fault_table.add("kill -9 during a checkpoint write", True, 0, "previous last.ckpt intact; temp file removed later")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_truncated_or_corrupt_checkpoint_is_one_line_naming_it(trained_run, tmp_path, damage, fault_table):
    bad = tmp_path / f"{damage}.ckpt"
    data = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 1000)
    for load in (load_checkpoint, load_module, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(bad)
        message = str(err.value)
        assert str(bad) in message and "truncated or corrupt" in message and "\n" not in message
    cfg = tiny_train_config(tmp_path, [*TINY_TRANSFORMER, "test=false", f"ckpt_path={bad}"])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        train(cfg)  # resuming from it: the same line, before any training
    assert str(bad) in str(err.value)
    fault_table.add(f"{damage} checkpoint (resume, evaluate, translate)", True, 0, "one-line error naming the file")


@pytest.mark.slow
def test_checkpoint_of_another_model_or_vocabulary(trained_run, tmp_path, fault_table):
    last = trained_run / "checkpoints" / "last.ckpt"
    other_model = tiny_train_config(tmp_path / "a", [*TINY_TRANSFORMER, *TRAINED_DATA, "model.d_model=48",
                                                     "test=false", f"ckpt_path={last}"])
    with pytest.raises(CheckpointError, match=r"another model.*d_model 32.*d_model 48") as err:
        train(other_model)
    assert str(last) in str(err.value) and "\n" not in str(err.value)
    other_vocab = tiny_train_config(tmp_path / "b", [*TINY_TRANSFORMER, *TRAINED_DATA, "data.vocab_size=250",
                                                     "test=false", f"ckpt_path={last}"])
    with pytest.raises(CheckpointError, match=r"Tokenizer mismatch.*vocab 300, sha256 \w+.*vocab 250, sha256 \w+"):
        train(other_vocab)
    fault_table.add("resume from another model's checkpoint", True, 0, "one line naming both models")
    fault_table.add("resume with another vocabulary", True, 0, "one line naming both tokenizers (vocab, sha256)")


@pytest.mark.slow
def test_checkpoints_carry_their_tokenizer_also_when_averaged(trained_run, tmp_path, fault_table):
    ckpts = sorted((trained_run / "checkpoints").glob("step*.ckpt"))
    saved = [load_checkpoint(p)[TOKENIZER_KEY] for p in ckpts]
    assert len(saved) == 2 and saved[0]["sha256"] == saved[1]["sha256"] and len(saved[0]["model"]) > 1000
    averaged = save_averaged(ckpts, tmp_path / "averaged.ckpt")
    assert load_checkpoint(averaged)[TOKENIZER_KEY]["sha256"] == saved[0]["sha256"]

    moved = tmp_path / "alone" / "averaged.ckpt"  # no data, no cache anywhere near it
    moved.parent.mkdir()
    shutil.move(averaged, moved)
    data, hidden = trained_run.parent / "data", trained_run.parent / "hidden"
    data.rename(hidden)  # the run's text, tokenizer and cache are gone while it translates
    try:
        module = load_module(moved)
        assert module.tokenizer.sha256 == saved[0]["sha256"]
        assert len(translate_lines(module, ["the small dog sees the cat ."], beam_size=2, max_len_b=4)) == 1
    finally:
        hidden.rename(data)

    other = load_checkpoint(ckpts[0])
    other[TOKENIZER_KEY] = {**other[TOKENIZER_KEY], "sha256": "0" * 64}
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="another tokenizer"):
        save_averaged([ckpts[1], tmp_path / "other.ckpt"], tmp_path / "bad.ckpt")
    fault_table.add("averaged checkpoint used without its data", True, 0, "tokenizer travels inside")
