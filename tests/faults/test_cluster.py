"""What a cluster does to a multi-process run: every rank ends together, none is left behind.

Through the real CLI with 2 processes over gloo:
- rank zero fails in work only it does (checkpoint averaging after fit, with no checkpoints
  where `average.dir` points): every rank ends promptly with an error naming that failure;
- SIGTERM to the launching process while the ranks are in the test after training: every
  rank stops (status 143);
- SLURM's SIGUSR1 before the time limit, under an `srun`-style launch (the test starts both
  ranks with SLURM's variables, and a fake `scontrol` on PATH), delivered to each rank at a
  different moment: both save `last.ckpt` of the same step, rank zero requeues the job once,
  both exit, and the requeued job (the same command with `ckpt_path=last`) continues
  exactly as the uninterrupted run.
Each checks that no process of the run is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .probe import losses_by_step, probe_overrides, read_records
from .runner import REPO, TINY_RUN, ckpt_step, env, run, start

EXIT_LIMIT_S = 30


def session_processes(sid: int) -> list[str]:
    """Live (non-zombie) processes of session `sid`, as `pid command` lines."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines() if line.strip()]
    return [f"{r[0]} {r[3][:100]}" for r in rows if len(r) == 4 and r[1] == str(sid) and not r[2].startswith("Z")]


def wait_until_gone(sid: int, timeout: float = EXIT_LIMIT_S) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        os.killpg(sid, signal.SIGKILL)
    return left


def args(root: Path, *extra: str) -> list[str]:
    return [*TINY_RUN, f"paths.root_dir={root}", f"hydra.run.dir={root / 'run'}", *extra]


@pytest.mark.slow
@pytest.mark.ddp
def test_a_rank_zero_failure_after_fit_ends_every_rank_with_its_error(tmp_path, fault_table):
    missing = tmp_path / "run" / "checkpoints" / "periodic"  # no periodic checkpoint was ever saved
    r = start("train.py", args(tmp_path, "trainer=ddp_sim", "trainer.max_steps=6", "test=true",
                               "average.last_n=5", f"average.dir={missing}"), tmp_path / "log.txt")
    code = r.wait(timeout=600)
    failed_at = time.monotonic()
    left = wait_until_gone(r.proc.pid)
    out = r.output
    assert code == 1, out[-4000:]
    assert f"average.dir={missing} holds no checkpoints" in out  # rank 0's own error
    assert "checkpoint averaging failed on rank 0, so rank 1 stops too" in out, out[-4000:]
    assert "Connection closed by peer" not in out
    assert left == [], f"processes left after the run failed: {left}"
    fault_table.add("DDP: rank 0 fails after fit (averaging)", True, 0,
                    f"every rank ended with rank 0's error; none left {time.monotonic() - failed_at:.1f} s after")


@pytest.mark.slow
@pytest.mark.ddp
def test_sigterm_to_the_launcher_during_the_test_stops_every_rank(tmp_path, fault_table):
    probe = tmp_path / "probe"
    r = start("train.py", args(tmp_path, "trainer=ddp_sim", "trainer.max_steps=6", "test=true",
                               "data.toy.num_test=16", *probe_overrides(probe, pause_in_test=True)),
              tmp_path / "log.txt")
    r.wait_for(probe / "paused_test")
    sent = time.monotonic()
    os.kill(r.proc.pid, signal.SIGTERM)  # the launching process (rank 0) only
    code = r.wait(timeout=EXIT_LIMIT_S + 60)
    left = wait_until_gone(r.proc.pid)
    seconds = time.monotonic() - sent
    out = r.output
    assert code == 143, out[-4000:]
    assert out.count("Stopped by SIGTERM during the test") >= 2, out[-4000:]  # rank 0 and rank 1
    assert "Connection closed by peer" not in out
    assert left == [], f"processes left after SIGTERM: {left}"
    assert seconds < EXIT_LIMIT_S
    fault_table.add("DDP: SIGTERM to the launcher during the test", True, 0,
                    f"both ranks stopped (143), none left {seconds:.1f} s after the signal")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun(root: Path, name: str, extra: list[str], port: int, pythonpath: Path | None = None) -> list[subprocess.Popen]:
    """Start 2 ranks the way `srun --ntasks=2` does: one process each, SLURM's variables set,
    Lightning's SLURMEnvironment takes ranks and addresses from them; `scontrol` is a fake
    that records its arguments."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {root / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    procs = []
    for rank in range(2):
        slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
                 "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_JOB_ID": "4242",
                 "SLURM_JOB_NAME": "nmtbench-test", "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        if pythonpath is not None:
            slurm["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env()["PYTHONPATH"]])
        log = open(root / f"{name}_rank{rank}.log", "w", encoding="utf-8")
        procs.append(subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args(root, *extra)],
                                      cwd=REPO, env={**env(), **slurm}, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        log.close()
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


SLURM_RUN = ["trainer=ddp_sim", "trainer.max_steps=14", "hydra.output_subdir=null"]


@pytest.mark.slow
@pytest.mark.ddp
def test_sigusr1_under_slurm_saves_requeues_once_and_the_requeued_job_resumes_exactly(tmp_path, fault_table):
    ref_root, root = tmp_path / "ref", tmp_path / "job"
    code, out = run("train.py", [*TINY_RUN, f"paths.root_dir={ref_root}", f"hydra.run.dir={ref_root / 'run'}",
                                 "trainer=ddp_sim", "trainer.max_steps=14", *probe_overrides(ref_root / "probe")],
                    ref_root / "ref.log")
    assert code == 0, out[-4000:]
    refs = [losses_by_step(read_records(ref_root / "probe", rank)) for rank in (0, 1)]

    probe = root / "probe_job"
    procs = srun(root, "job", [*SLURM_RUN, *probe_overrides(probe, signal_at_step=9)], free_port())
    deadline = time.monotonic() + 300
    while not (probe / "paused").exists():  # rank 0 is inside step 9; rank 1 waits for it in a collective
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "the job ended before step 9"
        time.sleep(0.05)
    os.kill(procs[1].pid, signal.SIGUSR1)  # rank 1 first, while it is blocked in the collective
    time.sleep(1.0)
    sent = time.monotonic()
    os.kill(procs[0].pid, signal.SIGUSR1)  # rank 0 a second later
    codes = finish(procs, timeout=EXIT_LIMIT_S + 60)
    seconds = time.monotonic() - sent
    logs = [(root / f"job_rank{r}.log").read_text() for r in (0, 1)]
    assert codes == [143, 143], logs[0][-3000:] + logs[1][-3000:]
    assert seconds < EXIT_LIMIT_S
    assert all(not session_processes(p.pid) for p in procs)
    assert (root / "scontrol.log").read_text().splitlines() == ["requeue 4242"]  # once, by rank 0
    last = root / "run" / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == 9
    assert not list(root.rglob("hpc_ckpt_*.ckpt")), "Lightning's own requeue handler saved a checkpoint"
    assert "Stopped by SIGUSR1 at step 9" in logs[0] and "requeued SLURM job 4242" in logs[0]

    # The requeued job: the same command, with ckpt_path=last (scripts/slurm/train.sbatch).
    procs = srun(root, "requeued", [*SLURM_RUN, "ckpt_path=last", *probe_overrides(root / "probe_requeued")],
                 free_port())
    codes = finish(procs)
    assert codes == [0, 0], (root / "requeued_rank0.log").read_text()[-4000:]
    for rank in (0, 1):
        got = losses_by_step(read_records(root / "probe_requeued", rank))
        assert sorted(got) == list(range(10, 15))
        assert all(got[s] == refs[rank][s] for s in got), f"rank {rank}: {got} vs {refs[rank]}"
    assert (root / "scontrol.log").read_text().splitlines() == ["requeue 4242"]
    fault_table.add("SLURM SIGUSR1 (srun launch, ranks signalled 1 s apart)", True, 0,
                    f"both saved step 9, one `scontrol requeue`, exit {seconds:.1f} s after; requeued job bit-identical")


@pytest.mark.slow
@pytest.mark.ddp
def test_slow_data_preparation_is_not_waited_for_in_a_collective(tmp_path, fault_table):
    """Both ranks start together (srun-style) on an empty data cache whose preparation takes
    longer than the process group's timeout (5 s here; 30 minutes by default, less than
    preparing WMT14 can take). One rank builds under the cache's file lock while the other
    waits on the lock, both before any process group exists: no collective times out."""
    slow = tmp_path / "slow_prepare"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import os, time\nimport torch.distributed as dist\nimport nmtbench.data.prepare as p\n_build = p._build\n"
        "def slow(*a, **k):\n"
        f"    open({str(tmp_path / 'built')!r} + os.environ['SLURM_PROCID'], 'w').write(str(dist.is_initialized()))\n"
        "    time.sleep(12)\n    return _build(*a, **k)\np._build = slow\n")
    timeout = ["+trainer.strategy.timeout._target_=datetime.timedelta", "+trainer.strategy.timeout.seconds=5"]
    extra = ["trainer=ddp_sim", "trainer.max_steps=4", "hydra.output_subdir=null", *timeout]
    started = time.monotonic()
    procs = srun(tmp_path, "prep", extra, free_port(), pythonpath=slow)
    codes = finish(procs)
    logs = [(tmp_path / f"prep_rank{r}.log").read_text() for r in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert time.monotonic() - started > 12  # the preparation did take longer than the timeout
    built = sorted(tmp_path.glob("built*"))
    assert len(built) == 1 and built[0].read_text() == "False", "built once, before any process group"
    assert any("Waiting for another process that is building" in log for log in logs)
    fault_table.add("data preparation longer than the collective timeout", True, 0,
                    "one rank built under the file lock, the other waited on it; no collective waited")
