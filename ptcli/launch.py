"""Drive Hydra's real machinery (run/sweep dirs, launchers, sweepers) from a CLI verb.

``hydra.main`` parses ``sys.argv`` itself, so we hand it ``[prog, *args]`` and restore argv afterwards.
``HYDRA_FULL_ERROR=1`` makes Hydra re-raise instead of printing and exiting 1, so we can map its errors
to the contract's exit codes: config/usage errors exit 2, failed runs 1, interrupted runs 130/143.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from pathlib import Path

from ptcli.errors import PtcliError, UsageError


def conf_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "conf"  # wheel install: conf/ ships as ptcli/conf
    return packaged if packaged.is_dir() else here.parent / "conf"


def debug_enabled() -> bool:
    return os.environ.get("PTCLI_DEBUG", "") not in ("", "0", "false")


def launch(command: str, args: list[str], json_out: bool = False) -> int:
    """Run one ptcli verb through Hydra; return the process exit code."""
    import hydra

    import ptcli.config  # noqa: F401  (registers the schemas)
    from ptcli import tasks

    tasks.STATE.reset(command=command, json_out=json_out)
    _quiet_libraries()
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    args = _resume_in_place(args)
    try:
        args = _join_torchrun(command, args)
    except PtcliError as exc:
        _report(exc)
        return exc.exit_code
    sys.argv = [f"ptcli-{command}", *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main = hydra.main(config_path=str(conf_dir()), config_name=command, version_base=None)
        main(tasks.TASKS[command])()
    except PtcliError as exc:
        _report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ptcli: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse inside Hydra (bad flag) exits 2 already
        return exc.code if isinstance(exc.code, int) else 2
    except Exception as exc:
        if tasks.STATE.started:
            _report(exc)
            return 1
        # Anything Hydra raised before our task started is a config or usage error.
        _report(UsageError(_explain_config_error(exc, command, args)), cause=exc)
        return 2
    finally:
        from ptcli import distributed

        distributed.shutdown()
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    if tasks.STATE.multirun:
        _summarize_sweep(tasks.STATE.results, json_out)
    return tasks.STATE.exit_code()


def _summarize_sweep(results: list[dict], json_out: bool) -> None:
    """Write ``summary.json`` beside the sweep's jobs and print one line per job."""
    from ptcli.rundir import atomic_write_text

    results = [r for r in results if r.get("run_dir")]
    if not results:
        return
    sweep_dir = Path(os.path.commonpath([r["run_dir"] for r in results]))
    if len(results) == 1:
        sweep_dir = Path(results[0]["run_dir"]).parent
    jobs = []
    for r in results:
        manifest = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        jobs.append({"dir": os.path.relpath(r["run_dir"], sweep_dir), "status": manifest["status"],
                     "exit_code": r["exit_code"], "overrides": manifest["overrides"],
                     "metrics": manifest.get("metrics", {}), "error": manifest.get("error")})
    summary = {"sweep_dir": str(sweep_dir), "jobs": jobs,
               "failed": sum(j["status"] != "completed" for j in jobs), "total": len(jobs)}
    atomic_write_text(sweep_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    for j in jobs:
        print(f"ptcli: job {j['dir']}: {j['status']}  {' '.join(j['overrides'])}", file=sys.stderr)
    print(f"ptcli: sweep {sweep_dir}: {summary['total'] - summary['failed']}/{summary['total']} completed",
          file=sys.stderr)
    if json_out:
        print_json(summary)


def _join_torchrun(command: str, args: list[str]) -> list[str]:
    """Under torchrun, join the process group and make every rank use the one run directory rank 0 names
    (no per-rank timestamps); only rank 0 keeps Hydra's log file."""
    from ptcli import distributed

    if not distributed.launched_by_torchrun():
        return args
    if any(a in ("-m", "--multirun") or a.startswith("hydra/launcher=") for a in args):
        raise UsageError("sweeps (-m) are not run under torchrun; sweep with a Hydra launcher instead "
                         "(README: Sweeps), each job of which may itself be a torchrun job.")
    distributed.init_from_torchrun()
    if not any(a.startswith("hydra.run.dir=") for a in args):
        import time

        stamp = distributed.broadcast_object(time.strftime("%Y-%m-%d_%H-%M-%S"))
        args = [*args, f"hydra.run.dir=outputs/{command}/{stamp}"]
    if not distributed.is_main():
        args = [*args, "hydra.job_logging.root.handlers=[console]"]
    return args


def _resume_in_place(args: list[str]) -> list[str]:
    """``resume=RUN_DIR`` continues that run in its own directory, not in a new timestamped one."""
    resume = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if resume and resume[-1] not in ("", "null") and not any(a.startswith("hydra.run.dir=") for a in args):
        return [*args, f"hydra.run.dir={resume[-1]}"]
    return args


def _quiet_libraries() -> None:
    """Library progress bars would drown ptcli's own progress in CI logs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if not debug_enabled():
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def _report(exc: BaseException, cause: BaseException | None = None) -> None:
    if debug_enabled():
        import traceback

        traceback.print_exception(cause or exc, file=sys.stderr)
    print(f"ptcli: error: {exc}", file=sys.stderr)


def _explain_config_error(exc: BaseException, command: str, args: list[str]) -> str:
    """Turn Hydra/OmegaConf errors into one paragraph naming the key and the valid choices."""
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    full_key = getattr(cause, "full_key", None) or getattr(exc, "full_key", None)
    m = re.search(r"Key '([^']+)' (?:is )?not in", text + " " + str(cause or ""))
    if m or (full_key and "not in struct" in str(cause)):
        key = full_key or m.group(1)
        parent, _, leaf = str(key).rpartition(".")
        valid = _keys_at(command, args, parent)
        msg = f"unknown config key '{key}'."
        if valid:
            close = difflib.get_close_matches(leaf, valid, n=1)
            if close:
                msg += f" Did you mean '{parent + '.' if parent else ''}{close[0]}'?"
            msg += f" Valid keys in '{parent or '<root>'}': {', '.join(sorted(valid))}."
        msg += " To add a new key on purpose, prefix it with '+'."
        return msg
    if "Could not find" in text or "Could not load" in text:
        text = text.split("Config search path")[0].strip()
        head, _, options = text.partition("Available options in")
        if options:
            group, _, names = options.partition(":")
            choices = ", ".join(n.strip() for n in names.split() if n.strip())
            return f"{' '.join(head.split())} Available options in{group}: {choices}."
        return " ".join(text.split())
    detail = f" ({cause})" if cause is not None and str(cause) not in text else ""
    return " ".join((text + detail).split())


def _keys_at(command: str, args: list[str], parent: str) -> list[str]:
    """The keys that exist under ``parent`` in the config composed without the bad override."""
    try:
        from hydra import compose, initialize_config_dir
        from omegaconf import DictConfig, OmegaConf

        group_choices = [a for a in args if "=" in a and "." not in a.split("=", 1)[0] and not a.startswith("-")]
        with initialize_config_dir(str(conf_dir()), version_base=None):
            cfg = compose(config_name=command, overrides=group_choices)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return list(node.keys()) if isinstance(node, DictConfig) else []
    except Exception:
        return []


def print_json(metrics: dict) -> None:
    sys.stdout.write(json.dumps(metrics, sort_keys=True) + "\n")
    sys.stdout.flush()
