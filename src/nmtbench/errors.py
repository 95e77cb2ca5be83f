"""Errors users can act on. Entry points print their message without a traceback."""


class NmtbenchError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(NmtbenchError):
    """A configuration key or value is invalid."""


class DataError(NmtbenchError):
    """Input data is missing, unreadable or inconsistent."""


class CheckpointError(NmtbenchError, ValueError):
    """A checkpoint is unreadable (truncated, corrupt) or does not fit this run (or the others
    it is averaged with)."""


class NonFiniteLossError(NmtbenchError):
    """Training produced a NaN/inf loss, gradient or weight and was stopped (nothing was saved)."""


class Preempted(SystemExit):
    """The run stopped on SIGTERM after saving a resumable checkpoint of the step it reached.

    A `SystemExit` with status 143 (128 + SIGTERM, what a killed process reports), so a job
    scheduler sees an interrupted run, not a finished one. `message` says how to resume.
    """

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message
