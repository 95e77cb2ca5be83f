"""Stop signals (SIGTERM, and SLURM's SIGUSR1 before a time limit) as flags the ranks agree on.

A cluster ends or preempts a job with SIGTERM (`scancel`, a preemption, `kill`); SLURM sends
SIGUSR1 some time before the job's time limit when asked (`#SBATCH --signal=SIGUSR1@120`).
Under DDP the signal reaches the ranks at different moments (or only the launching process),
and a rank that acts on it alone leaves the others blocked in a collective. So the handler
only records the signal; the ranks act on it together, at points where every rank is:

- during training, at the end of an optimizer step (the step's one all-reduce,
  `nmtbench.distributed.StepSync`): every rank saves `last.ckpt` of that step and stops
  (`nmtbench.callbacks.resume.ResumeCheckpoint`); after SIGUSR1, rank zero first asks SLURM
  to requeue the job (`scontrol requeue`), so it restarts and resumes from that checkpoint;
- during the test, after each test batch; between the phases of `train()`, at each phase end.

The process that launches the other ranks itself (Lightning's launcher, `trainer=ddp` /
`ddp_sim`) forwards the signal to them, so a `kill` of that one process reaches every rank.
DataLoader workers ignore both signals (`ignore_in_worker`): SLURM signals every process of
the job, and a worker killed by SIGUSR1's default action would end the run without a save.

Lightning's own handling is replaced: its SIGTERM handler broadcasts from inside the signal
handler (a collective that can start at a different point on each rank), and its SLURM
auto-requeue saves an `hpc_ckpt_*.ckpt` from inside the SIGUSR1 handler on every rank, a file
`ckpt_path=last` never reads. `train()` turns auto-requeue off (`SLURMEnvironment(auto_requeue=False)`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """The stop signals this process received (SIGTERM, SIGUSR1), recorded by a handler."""

    def __init__(self) -> None:
        self.received: set[int] = set()
        self.trainer: Any = None  # for forwarding to the ranks Lightning's launcher started
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def reset(self) -> None:
        self.received.clear()

    def install(self, trainer: Any = None) -> None:
        """Handle SIGTERM and SIGUSR1 with `record` (main thread only; idempotent). Called at
        the start of train() and again when training starts, over Lightning's handlers."""
        if trainer is not None:
            self.trainer = trainer
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            previous = signal.signal(signum, self.record)
            if previous is not self.record and signum not in self._previous:
                self._previous[signum] = previous

    def restore(self) -> None:
        """Put back the handlers found by the first `install`."""
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self.trainer = None

    def record(self, signum: int, frame: Any = None) -> None:
        first = signum not in self.received
        self.received.add(signum)
        if first:
            name = signal.Signals(signum).name
            what = "requeue the job and stop" if signum == signal.SIGUSR1 else "stop"
            log.warning("%s received: saving last.ckpt at the end of this optimizer step (every rank "
                        "together), then %s.", name, what)
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        """Pass the signal on to the processes Lightning's launcher started (rank zero)."""
        launcher = getattr(getattr(self.trainer, "strategy", None), "launcher", None)
        for proc in getattr(launcher, "procs", None) or []:
            try:
                if proc.poll() is None:
                    os.kill(proc.pid, signum)
            except (OSError, AttributeError):
                pass

    def describe(self) -> str:
        return "+".join(signal.Signals(s).name for s in sorted(self.received)) or "none"


SIGNALS = StopSignals()


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers ignore the stop signals (the main process acts on
    them and ends its workers), then seed as Lightning's `pl_worker_init_function` would."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> str:
    """`scontrol requeue <job>` (rank zero); returns what happened, for the log and the message."""
    job = slurm_job_id()
    if job is None:
        return "not under SLURM (no SLURM_JOB_ID): nothing to requeue"
    if not re.fullmatch(r"[0-9_]+", job):
        return f"SLURM job id {job!r} is not a job id: not requeued"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("scontrol requeue %s failed: %s", job, exc)
        return f"`scontrol requeue {job}` failed ({exc}): resume by hand"
    if result.returncode != 0:
        log.warning("scontrol requeue %s exited with %d: %s", job, result.returncode, result.stderr.strip())
        return f"`scontrol requeue {job}` exited with {result.returncode}: resume by hand"
    log.info("Requeued SLURM job %s", job)
    return f"requeued SLURM job {job}"


__all__ = ["SIGNALS", "STOP_SIGNALS", "StopSignals", "ignore_in_worker", "requeue_slurm_job", "slurm_job_id"]
