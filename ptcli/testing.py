"""Run ``ptcli ARGS`` in this process as a new process would run it: for tests of ptcli and of code built on it.

A real process costs seconds of imports per call; ``invoke`` runs the real entry point (``ptcli.cli.main``) here
and then puts back everything a run may change in the process, so that runs do not leak into each other: the
working directory, environment, ``sys.argv``, torch's thread count, signal handlers, logging handlers and level,
warning filters, Hydra's global state and ptcli's own per-command state (the trusted packages, the launcher's
state, a recorded sweep). ptcli's test suite (``tests/conftest.py``) and its fuzzer (``scripts/fuzz_cli.py``) both
run the CLI through it, and a test compares it with a real process (``tests/test_fuzz.py``).

What only a real process shows is out of its reach: start-up and ``--help`` output, environment variables that
libraries read once at import (``HF_HUB_OFFLINE``), launchers that start processes, torchrun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path


@dataclasses.dataclass
class Invocation:
    """What ``ptcli ARGS`` did: its exit code, its output, and (``catch=True``) an exception that got past the CLI's
    own handling, formatted as a traceback (``code`` is then None)."""

    code: int | None
    stdout: str
    stderr: str
    escaped: str | None = None

    def __repr__(self) -> str:
        escaped = f"\n--- escaped\n{self.escaped}" if self.escaped else ""
        return f"exit {self.code}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-8000:]}{escaped}"


class InvocationTimeout(BaseException):
    """Raised (by SIGALRM) inside a run that takes longer than its ``timeout``; a BaseException, so that ptcli's
    own error handling does not turn it into an exit code."""


# torch's thread count in a new process (the first invocation records it): a run that set trainer.num_threads
# must not slow every later one down.
_FRESH_THREADS: dict[str, int] = {}


def invoke(args: Sequence[str], *, cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
           timeout: int | None = None, catch: bool = False) -> Invocation:
    """``ptcli ARGS`` in this process: stdout and stderr captured, the exit code from ``SystemExit``.

    ``env`` replaces the whole environment for the run (None: the current one); ``cwd`` is its working directory;
    ``timeout`` (seconds, main thread only) stops a run that takes longer with ``InvocationTimeout``. An exception
    that escapes the CLI propagates, or with ``catch=True`` is returned as ``escaped``."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from ptcli import build, cli, sweeps, tasks

    root = logging.getLogger()
    saved_cwd, saved_env, saved_argv = os.getcwd(), dict(os.environ), sys.argv
    saved_threads, saved_trusted = torch.get_num_threads(), build.TRUSTED
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    saved_handlers, saved_level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    # Stream handlers made earlier (Hydra's console handler from another runner, datasets' or transformers' own)
    # keep the stream that was sys.stderr when they were made, maybe a capture since closed: a record through one
    # (matplotlib's "generated new fontManager" on a machine without its font cache) would print a "Logging error"
    # traceback. For this run they write to its stderr, as in a new process.
    stream_handlers = {h: h.stream for lg in [root, *logging.Logger.manager.loggerDict.values()]
                       for h in getattr(lg, "handlers", ())
                       if type(h) is logging.StreamHandler and h.stream is not sys.__stdout__}
    for h in stream_handlers:
        h.stream = err  # not setStream: it flushes the old stream, which may be closed
    code: int | None = None
    escaped: str | None = None

    def on_alarm(signum: int, frame: object) -> None:
        raise InvocationTimeout(f"ptcli {' '.join(args)} ran longer than {timeout} s")

    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    sys.argv = ["ptcli", *args]
    torch.set_num_threads(_FRESH_THREADS.setdefault("n", torch.get_num_threads()))
    # What one CLI invocation records in module globals (a new process starts without it).
    tasks.STATE.reset(command="", json_out=False)
    sweeps.SWEEP.reset()
    try:
        if cwd is not None:
            os.chdir(cwd)
        if timeout:
            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(timeout)
        # A new process's warning filters, so that a warning shows on stderr each run (pytest records them otherwise).
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: sys.stderr.write(
                warnings.formatwarning(msg, cat, fn, ln, line))
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=sys.stderr)
    except BaseException as exc:  # with catch=True: what a fuzzer looks for, a KeyboardInterrupt that escaped too
        if not catch or isinstance(exc, InvocationTimeout):
            raise
        escaped = "".join(traceback.format_exception(exc))
    finally:
        if timeout:
            signal.alarm(0)
        build.TRUSTED = saved_trusted
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        torch.set_num_threads(saved_threads)
        for s, h in saved_signals.items():
            signal.signal(s, h)
        for h in root.handlers:
            if h not in saved_handlers:  # Hydra's job log file and console handlers
                h.close()
        # A file handler closed meanwhile (Hydra's, left by code that ran Hydra without this runner) would reopen
        # its file, maybe in a deleted directory, at the next record: never put one back.
        root.handlers[:] = [h for h in saved_handlers
                            if not (isinstance(h, logging.FileHandler) and h.stream is None)]
        root.setLevel(saved_level)
        for h, stream in stream_handlers.items():
            h.stream = stream
        GlobalHydra.instance().clear()
    return Invocation(code, out.getvalue(), err.getvalue(), escaped)
