"""A killed or preempted run, resumed with `ckpt_path=last`, is the same run.

Through the real CLI (`scripts/train.py`) on the shrunk smoke experiment (dropout on, runs
crossing epochs), the per-step `train/loss` of an uninterrupted run is compared, bit for bit,
with a chain of interrupted runs of the same command in the same run directory:

1. `kill -9` at step 14 (its checkpoints: the validations at 6 and 12) -> resume from 12;
2. SIGTERM at step 17 -> exits within seconds, `last.ckpt` of step 17 -> resume from 17;
3. SIGTERM at step 18, a validation step -> the validation runs, stop at 19 -> resume.

The same (1, 2) under 2-process DDP (`trainer=ddp_sim`), with a NaN loss on rank 1 at one
step that both ranks must skip. The results.json totals (tokens, validation curve) of the
resumed chain equal the uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from .probe import losses_by_step, probe_overrides, read_records
from .runner import STEPS, TINY_RUN, ckpt_step, kill_group, run, start

SIGTERM_LIMIT_S = 60


def args(root: Path, *extra: str, ddp: bool = False) -> list[str]:
    trainer = ["trainer=ddp_sim"] if ddp else []
    return [*TINY_RUN, *trainer, f"paths.root_dir={root}", f"hydra.run.dir={root / 'run'}", *extra]


def assert_same_losses(ref: dict[int, float], got: dict[int, float], steps: range, what: str) -> None:
    missing = [s for s in steps if s not in got]
    assert not missing, f"{what}: no loss recorded for steps {missing}"
    diff = [(s, ref[s], got[s]) for s in steps if got[s] != ref[s]]
    assert not diff, f"{what}: losses differ from the uninterrupted run at (step, ref, got) {diff[:5]}"


def sigterm_at(root: Path, step: int, name: str, ddp: bool = False) -> tuple[int, float, str]:
    """Resume, pause during `step`, SIGTERM rank zero; (exit code, seconds to exit, output)."""
    probe = root / f"probe_{name}"
    r = start("train.py", args(root, "ckpt_path=last", *probe_overrides(probe, signal_at_step=step), ddp=ddp),
              root / f"{name}.log")
    r.wait_for(probe / "paused")
    sent = time.monotonic()
    os.kill(r.proc.pid, signal.SIGTERM)  # rank zero only: it must bring rank 1 down with it
    code = r.wait(timeout=SIGTERM_LIMIT_S + 60)
    return code, time.monotonic() - sent, r.output


def kill9_at(root: Path, step: int, name: str, ddp: bool = False, **probe_kwargs) -> None:
    probe = root / f"probe_{name}"
    r = start("train.py", args(root, *probe_overrides(probe, pause_at_step=step, **probe_kwargs), ddp=ddp),
              root / f"{name}.log")
    r.wait_for(probe / "paused")
    kill_group(r, signal.SIGKILL)  # every process of the run, like a node that dies
    r.proc.wait(timeout=60)


def results(root: Path) -> dict:
    return json.loads((root / "run" / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_kill9_and_sigterm_resume_exactly(tmp_path, fault_table):
    ref_root, root = tmp_path / "ref", tmp_path / "chain"
    code, out = run("train.py", args(ref_root, *probe_overrides(ref_root / "probe")), ref_root / "ref.log")
    assert code == 0, out[-4000:]
    ref = losses_by_step(read_records(ref_root / "probe"))
    assert sorted(ref) == list(range(1, STEPS + 1))

    # 1. kill -9 after the second validation checkpoint
    kill9_at(root, 14, "killed")
    last = root / "run" / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == 12
    assert_same_losses(ref, losses_by_step(read_records(root / "probe_killed")), range(1, 15), "killed run")

    # 2. SIGTERM at step 17: exits promptly with last.ckpt of step 17
    code, seconds, out = sigterm_at(root, 17, "term17")
    assert code == 143, out[-4000:]
    assert seconds < SIGTERM_LIMIT_S
    assert ckpt_step(last) == 17, out[-4000:]
    assert "Stopped by SIGTERM at step 17" in out
    assert_same_losses(ref, losses_by_step(read_records(root / "probe_term17")), range(13, 18), "resumed after kill -9")

    # 3. SIGTERM at step 18, where a validation is due: it runs, the stop follows at step 19
    code, seconds18, out = sigterm_at(root, 18, "term18")
    assert code == 143 and seconds18 < SIGTERM_LIMIT_S, out[-4000:]
    assert ckpt_step(last) == 19
    assert_same_losses(ref, losses_by_step(read_records(root / "probe_term18")), range(18, 20), "resumed after SIGTERM")

    code, out = run("train.py", args(root, "ckpt_path=last", *probe_overrides(root / "probe_end")), root / "end.log")
    assert code == 0, out[-4000:]
    assert_same_losses(ref, losses_by_step(read_records(root / "probe_end")), range(20, STEPS + 1), "resumed after SIGTERM")

    # The measurement totals continue rather than restart; no validation point is lost.
    want, got = results(ref_root), results(root)
    assert got["steps"] == want["steps"] == STEPS
    assert got["tokens_seen"] == want["tokens_seen"] and got["sentences_seen"] == want["sentences_seen"]
    assert [p["step"] for p in got["val_curve"]] == [p["step"] for p in want["val_curve"]] == [6, 12, 18, 24]
    assert [p["bleu"] for p in got["val_curve"]] == [p["bleu"] for p in want["val_curve"]]

    fault_table.add("kill -9 mid-run, resume ckpt_path=last", True, 0,
                    "losses bit-identical; 2 steps redone since the step-12 checkpoint")
    fault_table.add("SIGTERM mid-step", True, 0, f"exit {seconds:.1f} s after the signal, checkpoint of step 17")
    fault_table.add("SIGTERM before a validation", True, 0,
                    f"validation at 18 kept, checkpoint of step 19, exit {seconds18:.1f} s after the signal")
    fault_table.add("resumed run's results.json", True, 0, "tokens, sentences and val curve equal the uninterrupted run")


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_kill9_and_sigterm_resume_exactly(tmp_path, fault_table):
    """2 processes (gloo); rank 1 alone gets a NaN loss at step 4: both ranks skip that update."""
    nan = {"nan_steps": [3], "nan_ranks": [1]}
    ref_root, root = tmp_path / "ref", tmp_path / "chain"
    code, out = run("train.py", args(ref_root, *probe_overrides(ref_root / "probe", **nan), ddp=True),
                    ref_root / "ref.log")
    assert code == 0, out[-4000:]
    refs = [losses_by_step(read_records(ref_root / "probe", rank)) for rank in (0, 1)]
    assert all(sorted(r) == list(range(1, STEPS + 1)) for r in refs)
    for rank in (0, 1):  # the NaN step was skipped on both ranks: no update, same weights
        end = json.loads((ref_root / "probe" / f"end_rank{rank}.json").read_text())
        assert end["skipped_steps"] == [3] and end["nonfinite_skipped_batches"] == 1 and end["finite_weights"]
        weights = {r["step"]: r["weights"] for r in read_records(ref_root / "probe", rank)}
        assert weights[4] == weights[3] != weights[5]
    assert refs[1][4] != refs[1][4]  # rank 1's loss at step 4 was NaN

    kill9_at(root, 14, "killed", ddp=True, **nan)
    assert ckpt_step(root / "run" / "checkpoints" / "last.ckpt") == 12

    probe = root / "probe_term"
    r = start("train.py", args(root, "ckpt_path=last", *probe_overrides(probe, signal_at_step=17, **nan), ddp=True),
              root / "term.log")
    r.wait_for(probe / "paused")
    sent = time.monotonic()
    os.kill(r.proc.pid, signal.SIGTERM)  # rank zero only
    code = r.wait(timeout=SIGTERM_LIMIT_S + 60)
    seconds = time.monotonic() - sent
    assert code == 143 and seconds < SIGTERM_LIMIT_S, r.output[-4000:]
    assert ckpt_step(root / "run" / "checkpoints" / "last.ckpt") == 17

    code, out = run("train.py", args(root, "ckpt_path=last", *probe_overrides(root / "probe_end", **nan), ddp=True),
                    root / "end.log")
    assert code == 0, out[-4000:]
    for rank in (0, 1):
        assert_same_losses(refs[rank], losses_by_step(read_records(probe, rank)), range(13, 18), f"rank {rank} after kill -9")
        assert_same_losses(refs[rank], losses_by_step(read_records(root / "probe_end", rank)), range(18, STEPS + 1),
                           f"rank {rank} after SIGTERM")
        end = json.loads((root / "probe_end" / f"end_rank{rank}.json").read_text())
        assert end["nonfinite_skipped_batches"] == 1  # the count continues across resumes
    assert results(root)["tokens_seen"] == results(ref_root)["tokens_seen"]

    fault_table.add("DDP (2 processes): kill -9 of every rank, resume", True, 0, "per-rank losses bit-identical")
    fault_table.add("DDP: SIGTERM to rank 0 only", True, 0, f"both ranks saved step 17 and exited in {seconds:.1f} s")
    fault_table.add("DDP: NaN loss on rank 1 only", True, 0, "both ranks skipped that update (step 3); count kept across resumes")


@pytest.mark.slow
def test_sigterm_during_the_final_test_exits_at_once(tmp_path, fault_table):
    probe = tmp_path / "probe"
    r = start("train.py", args(tmp_path, "trainer.max_steps=6", "test=true", "data.toy.num_test=8",
                               *probe_overrides(probe, pause_in_test=True)), tmp_path / "test.log")
    r.wait_for(probe / "paused_test")
    sent = time.monotonic()
    os.kill(r.proc.pid, signal.SIGTERM)
    code = r.wait(timeout=SIGTERM_LIMIT_S + 60)
    seconds = time.monotonic() - sent
    assert code == 143 and seconds < SIGTERM_LIMIT_S, r.output[-3000:]
    assert "Stopped by SIGTERM during the test" in r.output
    assert ckpt_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == 6  # training was complete
    fault_table.add("SIGTERM during the final test", True, 0, f"exit 143 {seconds:.1f} s after the signal")
