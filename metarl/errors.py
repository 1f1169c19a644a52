"""The errors metarl expects: each says what is wrong and how to fix it, in one message.

They all derive from `MetarlError`, which the ``metarl`` command prints as one line
(``metarl train: error: ...``, exit status 2) instead of a traceback. This module is the bottom of
the package: it imports nothing from metarl, so config, tasks, sampling and training can all raise
these without importing each other.
"""

from __future__ import annotations


class MetarlError(Exception):
    """Base of the errors whose message is the whole answer (no traceback needed)."""


class ConfigError(MetarlError, ValueError):
    """One or more problems in a configuration; the message lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"invalid configuration: {problems[0]}")
        else:
            super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class EnvError(MetarlError, ValueError):
    """An environment cannot be created, does not follow the task protocol, or failed while stepping."""


class NonFiniteError(MetarlError, FloatingPointError):
    """NaN or infinity in episodes, losses, gradients or parameters."""


class CheckpointError(MetarlError, ValueError):
    """A checkpoint is missing, corrupt, unsafe, untrusted or incompatible, or cannot be written."""


class RunDirError(MetarlError):
    """A run directory cannot be created, is taken (by another run or a live process), or cannot be written."""


class WorkerError(MetarlError, RuntimeError):
    """A worker process raised, died or stopped answering; the message names it, its copies and the cause.

    `details` holds the workers' own tracebacks (``metarl ... --debug`` prints them)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details
