"""Exceptions that map to the contract's exit codes.

A ``UsageError`` is the user's to fix (bad config, bad input): exit 2, a one-paragraph message, no
traceback. A ``RunFailed`` is a run that started and died: exit 1, ``run.json`` status ``failed``.
"""

from __future__ import annotations


class PtcliError(Exception):
    exit_code = 1


class UsageError(PtcliError):
    """Bad config or input, detected before training. Exit code 2."""

    exit_code = 2


class RunFailed(PtcliError):
    """The run started and could not finish. Exit code 1."""

    exit_code = 1


class Interrupted(PtcliError):
    """SIGINT (130) or SIGTERM (143) stopped the run after a checkpoint."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
