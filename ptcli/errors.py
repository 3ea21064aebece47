"""Exceptions that map to the contract's exit codes.

A ``UsageError`` is the user's to fix (bad config, bad input): exit 2, a one-paragraph message, no
traceback. A ``RunFailed`` is a run that started and died: exit 1, ``run.json`` status ``failed``. Any other
exception is a bug in ptcli or a plugin: exit 1, "internal error", the traceback saved to a file.
"""

from __future__ import annotations

from pathlib import Path


def debug_enabled() -> bool:
    """``PTCLI_DEBUG=1``: tracebacks for every error, and libraries' own progress output left on."""
    import os

    return os.environ.get("PTCLI_DEBUG", "") not in ("", "0", "false")


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


def is_config_error(exc: BaseException) -> bool:
    """Whether Hydra/OmegaConf raised ``exc`` because of the user's config or overrides (exit 2), as opposed
    to a bug in ptcli or a broken plugin (exit 1, "internal error").

    A plugin that Hydra cannot instantiate because its class is missing is a config error; one whose own
    code raises is not: ``InstantiationException`` is judged by what it wraps.
    """
    from hydra.errors import HydraException, InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, InstantiationException):
        cause = exc.__cause__ or exc.__context__
        return cause is None or isinstance(cause, (ImportError, HydraException, OmegaConfBaseException)) \
            or "Error locating target" in str(exc)
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return True
    # Hydra also rejects some overrides with plain ValueError/TypeError (e.g. "debug=smoke debug=null"): judged by
    # where it was raised, in Hydra's or OmegaConf's own code, not in a plugin's (hydra_plugins/) or ptcli's.
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return isinstance(exc, (ValueError, TypeError, KeyError)) and last is not None and \
        any(f"{sep}{pkg}{sep}" in last for pkg in ("hydra", "omegaconf") for sep in "/\\")


def save_traceback(exc: BaseException, run_dir: str | Path | None = None) -> Path | None:
    """Write ``exc``'s traceback to ``run_dir/traceback.txt`` (when that run directory exists) or to a new
    file under ptcli's cache (``errors/``); return where, or None if nothing could be written."""
    import os
    import tempfile
    import time
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    candidates = []
    if run_dir is not None and Path(run_dir).is_dir():
        candidates.append(Path(run_dir) / "traceback.txt")
    try:
        from ptcli.cache import cache_root

        candidates.append(cache_root() / "errors" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt")
    except OSError:
        pass
    candidates.append(Path(tempfile.gettempdir()) / f"ptcli-error-{os.getpid()}-{time.time_ns()}.txt")
    for path in candidates:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


def internal_error_message(exc: BaseException, run_dir: str | Path | None = None) -> str:
    """The one line printed for an unexpected exception: what it was and where its traceback went."""
    where = save_traceback(exc, run_dir)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    saved = f"traceback saved to {where}" if where else "the traceback could not be saved"
    return (f"ptcli: internal error: {type(exc).__name__}{': ' + first if first else ''} ({saved}). This is a bug "
            "in ptcli or in a plugin, not in your config; please report it with that file.")


def offline() -> bool:
    import os

    return any(os.environ.get(v, "") not in ("", "0", "false", "False") for v in
               ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_hint(exc: BaseException, what: str) -> str:
    """A hint for a failed hub load that says "offline" only when that is the reason."""
    names = {type(e).__name__ for e in _chain(exc)}
    if offline():
        return (f"You are offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set): download {what} once online, or pass a "
                "local directory.")
    if names & {"ConnectionError", "Timeout", "ReadTimeout", "ConnectTimeout", "OfflineModeIsEnabled",
                "LocalEntryNotFoundError", "gaierror"}:
        return f"The hub could not be reached: check the network, or pass a local directory instead of {what}."
    return "Check the name (or path) and the files in it."


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen
