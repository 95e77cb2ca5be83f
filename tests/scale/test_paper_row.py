"""Rehearsal of a paper row at cluster shape, on CPU (`pytest -m scale`).

`experiment=vaswani2017_base` (its recipe: the pinned tokens per optimizer step, inverse-sqrt
schedule, periodic checkpoints averaged after fit, test of the average) at smoke size on
generated data, with `trainer=ddp_sim`:

- 2 processes, the step pinned at 1,200 padded tokens so each process accumulates k = 2
  micro-batches of 300; 4 processes take the same step as k = 1;
- more than three epochs, validation and a periodic checkpoint every few optimizer steps;
- the run is interrupted twice and resumed each time with `ckpt_path=last`, the way a cluster
  does it: SIGTERM to the launching process in the middle of epoch 2 (a preemption), then
  SIGUSR1 with a fake `scontrol` on PATH (SLURM's warning before the time limit: save, requeue,
  exit); the third start runs to the end, averages the last periodic checkpoints, tests and
  writes results.json; `scripts/report.py` turns it into a table row.

Checks: the per-step losses of the interrupted chain equal the uninterrupted run's on every
rank; validations fall on the same optimizer steps with 2 and with 4 processes; one
results.json; no process left behind; the report has the row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.probe import losses_by_optimizer_step, probe_overrides, read_records
from tests.faults.runner import REPO, ckpt_step, env, start

pytestmark = [pytest.mark.scale, pytest.mark.slow, pytest.mark.ddp]

VAL_EVERY, SAVE_EVERY = 4, 3
ROW = [
    "experiment=vaswani2017_base", "data=toy", "size=smoke", "trainer=ddp_sim",
    "data.toy.num_train=220", "data.toy.num_valid=16", "data.toy.num_test=16", "data.vocab_size=200",
    "data.max_len=60", "data.max_tokens=300", "data.effective_batch_tokens=1200",
    "model.d_model=32", "model.num_heads=2", "model.d_ff=64", "model.num_encoder_layers=1",
    "model.num_decoder_layers=1", "model.optim.warmup_steps=10", "model.max_positions=128",
    "trainer.max_steps=26", f"trainer.val_check_interval={VAL_EVERY}", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
    "callbacks.throughput.cpu_benchmark_seconds=0",
    f"callbacks.periodic_checkpoint.every_n_train_steps={SAVE_EVERY}", "average.last_n=3",
    "callbacks.bleu.beam_size=2", "callbacks.bleu.test_beam_size=2", "callbacks.bleu.max_len_b=5",
]
STEPS = 26


def args(root: Path, name: str, *extra: str) -> list[str]:
    return [*ROW, f"paths.root_dir={root}", f"hydra.run.dir={root / name}", *extra]


def survivors(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines() if line.strip()]
    return [r[3][:80] for r in rows if len(r) == 4 and r[1] == str(sid) and not r[2].startswith("Z")]


def finished(run, timeout: float = 900) -> int:
    code = run.wait(timeout=timeout)
    deadline = time.monotonic() + 30
    while survivors(run.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert survivors(run.proc.pid) == [], "processes left behind"
    return code


def interrupt(root: Path, name: str, step: int, signum: int, *extra: str, environ: dict | None = None) -> str:
    """Start (or resume) the chain, signal the launching process during `step`; its output."""
    probe = root / f"probe_{name}"
    run = start("train.py", args(root, "chain", "ckpt_path=last", *extra, *probe_overrides(probe, signal_at_step=step)),
                root / f"{name}.log", environ=environ)
    run.wait_for(probe / "paused", timeout=600)
    os.kill(run.proc.pid, signum)  # the launcher only: it must reach the other rank too
    assert finished(run) == 143, run.output[-4000:]
    return run.output


def validation_steps(run_dir: Path) -> list[int]:
    results = json.loads((run_dir / "results.json").read_text())
    return [point["step"] for point in results["val_curve"]]


def test_a_paper_row_survives_preemption_and_requeue_at_cluster_shape(tmp_path):
    root = tmp_path
    # The uninterrupted reference, 2 processes (k = 2).
    ref = start("train.py", args(root, "ref", *probe_overrides(root / "probe_ref")), root / "ref.log")
    assert finished(ref) == 0, ref.output[-4000:]
    assert "2 micro-batch(es) of <= 300 padded tokens on 2 device(s)" in ref.output
    refs = [losses_by_optimizer_step(read_records(root / "probe_ref", rank)) for rank in (0, 1)]
    assert all(sorted(r) == list(range(1, STEPS + 1)) and {len(v) for v in r.values()} == {2} for r in refs)
    epochs = {r["opt_step"]: r["epoch"] for r in read_records(root / "probe_ref", 0)}
    assert max(epochs.values()) >= 3, "the run must cross more than three epochs"
    mid_epoch2 = next(s for s in sorted(epochs) if epochs[s] == 1 and epochs.get(s - 1) == 1 and epochs.get(s + 1) == 1)

    # The chain: SIGTERM in the middle of epoch 2, then SIGUSR1 under "SLURM", then to the end.
    out = interrupt(root, "term", mid_epoch2, signal.SIGTERM)
    assert f"Stopped by SIGTERM at step {mid_epoch2}" in out
    last = root / "chain" / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == mid_epoch2
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {root / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    usr1_step = mid_epoch2 + 5
    out = interrupt(root, "usr1", usr1_step, signal.SIGUSR1,
                    environ={"SLURM_JOB_ID": "777", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert f"Stopped by SIGUSR1 at step {usr1_step}" in out and "requeued SLURM job 777" in out
    assert (root / "scontrol.log").read_text().splitlines() == ["requeue 777"]
    assert ckpt_step(last) == usr1_step
    end = start("train.py", args(root, "chain", "ckpt_path=last", *probe_overrides(root / "probe_end")),
                root / "end.log")
    assert finished(end) == 0, end.output[-4000:]

    # Per-step losses equal to the uninterrupted run, on every rank.
    for rank in (0, 1):
        got: dict[int, list[float]] = {}
        for part in ("term", "usr1", "end"):
            got.update(losses_by_optimizer_step(read_records(root / f"probe_{part}", rank)))
        assert sorted(got) == list(range(1, STEPS + 1))
        diff = [(s, refs[rank][s], got[s]) for s in got if got[s] != refs[rank][s]]
        assert not diff, f"rank {rank}: (step, uninterrupted, chain) {diff[:5]}"

    # One results.json, with the averaged checkpoint's test; the report has the row.
    assert sorted(p.relative_to(root / "chain") for p in (root / "chain").rglob("results.json")) == [Path("results.json")]
    results = json.loads((root / "chain" / "results.json").read_text())
    assert results["steps"] == STEPS and results["world_size"] == 2
    assert [e["weights"] for e in results["test_evaluations"]] == ["best", "averaged"]
    assert len(results["test_evaluations"][1]["averaged_from"]) == 3
    assert validation_steps(root / "chain") == validation_steps(root / "ref") == list(range(VAL_EVERY, STEPS + 1, VAL_EVERY))
    report = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(root / "chain"), "--out",
                             str(root / "report")], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (root / "report" / "table.md").read_text()
    assert "vaswani2017_base" in table or "Transformer base" in table

    # 4 processes take the same optimizer step without accumulation and validate at the same steps.
    four = start("train.py", args(root, "four", "trainer.devices=4", "test=false", "average.last_n=0"),
                 root / "four.log")
    assert finished(four) == 0, four.output[-4000:]
    assert "1 micro-batch(es) of <= 300 padded tokens on 4 device(s)" in four.output
    assert validation_steps(root / "four") == validation_steps(root / "ref")
