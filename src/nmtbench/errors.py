"""Errors users can act on. Entry points print their message without a traceback."""


class NmtbenchError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(NmtbenchError):
    """A configuration key or value is invalid."""


class DataError(NmtbenchError):
    """Input data is missing, unreadable or inconsistent."""
