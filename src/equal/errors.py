"""Exception and warning types shared across ``equal``.

Every error a user can cause derives from :class:`EqualError`, so the command line can turn it into a
one-line message and exit code 1 without a traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ConvergenceWarning", "DataError", "EqualError", "LLMError", "RunLockedError"]


class EqualError(Exception):
    """Base class of the errors ``equal`` raises on bad input or a failed run."""


class ConfigError(EqualError, ValueError):
    """A setting is invalid; the message names its key path (``cluster.k``)."""


class DataError(EqualError, ValueError):
    """Input data is malformed; the message names the file, 1-based line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class LLMError(EqualError, RuntimeError):
    """An LLM request failed for good (after the configured retries)."""


class RunLockedError(EqualError, RuntimeError):
    """Another process holds the run directory's lock (see :mod:`equal.runlock`); the message names it."""

    def __init__(self, message: str, *, path: str | None = None, holder: dict[str, object] | None = None) -> None:
        self.path = path
        self.holder = holder
        super().__init__(message)


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before reaching its tolerance."""
