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

from ptcli.errors import PtcliError, UsageError, debug_enabled


def conf_dir() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "conf"  # wheel install: conf/ ships as ptcli/conf
    return packaged if packaged.is_dir() else here.parent / "conf"


def launch(command: str, args: list[str], json_out: bool = False) -> int:
    """Run one ptcli verb through Hydra; return the process exit code."""
    import hydra

    import ptcli.config  # noqa: F401  (registers the schemas)
    import ptcli.rundir  # noqa: F401  (registers ${ptcli.unique_dir:...}, the default hydra.run.dir)
    from ptcli import tasks

    tasks.STATE.reset(command=command, json_out=json_out)
    _quiet_libraries()
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    try:
        args = _resume_in_place(args)
        _check_flags(args)
        args = _join_torchrun(command, args)
        ptcli.rundir.check_run_dir_arg(args, command)  # before Hydra writes its files there
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
        from ptcli.errors import is_config_error
        from ptcli.sweeps import jobs_started

        if tasks.STATE.started or jobs_started():  # (jobs of joblib/submitit run in other processes)
            _report(exc)
            _finish_sweep(json_out)
            return 1
        # Before our task started: Hydra/OmegaConf rejecting the config, or the file system refusing the run
        # directory, is the user's to fix (2); anything else is a bug in ptcli or a plugin (1).
        if is_config_error(exc):
            _report(UsageError(_explain_config_error(exc, command, args)), cause=exc)
            return 2
        if isinstance(exc, OSError) and exc.filename is not None:
            _report(UsageError(f"cannot create or write '{exc.filename}': {exc.strerror or exc}. Check the "
                               "path and its permissions (hydra.run.dir / hydra.sweep.dir)."), cause=exc)
            return 2
        _report(exc)
        return 1
    finally:
        from ptcli import distributed

        distributed.shutdown()
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return _finish_sweep(json_out)


def _finish_sweep(json_out: bool) -> int:
    """Summarize a sweep, if this was one, and return the exit code. Jobs run in this process (the basic
    launcher) report to ``tasks.STATE``; jobs of the joblib/submitit launchers ran in other processes, so
    their outcomes are read from the run directories of the sweep (``ptcli/sweeps.py``)."""
    from ptcli import tasks
    from ptcli.sweeps import SWEEP, results_from_dirs

    state = tasks.STATE
    if SWEEP.dir is not None and not state.results:
        state.multirun = True
        state.results = results_from_dirs(SWEEP.dir)
    if state.multirun:
        _summarize_sweep(state.results, json_out, SWEEP.dir)
    return state.exit_code()


def _summarize_sweep(results: list[dict], json_out: bool, sweep_dir: Path | None = None) -> None:
    """Write ``summary.json`` beside the sweep's jobs and print one line per job, and the best job: the
    Optuna sweeper's best trial, or else the best value of the jobs' key metric (``tasks._key_metric``)."""
    from ptcli.rundir import atomic_write_text
    from ptcli.sweeps import SWEEP, monitored_metric, natural_direction, optimization_results

    results = [r for r in results if r.get("run_dir")]
    if not results:
        return
    if sweep_dir is None:
        sweep_dir = Path(os.path.commonpath([r["run_dir"] for r in results]))
        if len(results) == 1:
            sweep_dir = Path(results[0]["run_dir"]).parent
    jobs = []
    for r in results:
        try:
            manifest = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        except (OSError, ValueError):
            manifest = {"status": "failed", "overrides": [], "error": "the job wrote no readable run.json "
                        "(its process ended before ptcli started the run; see the job's log)"}
        if "status" in r:  # the job was refused before its run opened: the directory's run.json is not its own
            manifest = {k: r[k] for k in ("status", "overrides", "error", "metrics")}
        metrics = manifest.get("metrics") or {}
        metric = monitored_metric(metrics)
        jobs.append({"dir": os.path.relpath(r["run_dir"], sweep_dir), "status": manifest.get("status"),
                     "exit_code": r["exit_code"], "overrides": manifest.get("overrides") or [],
                     "metrics": metrics, "error": manifest.get("error"),
                     "metric": metric, "value": metrics.get(metric) if metric else None})
    summary = {"sweep_dir": str(sweep_dir), "jobs": jobs,
               "failed": sum(j["status"] != "completed" for j in jobs), "total": len(jobs)}
    done = [j for j in jobs if j["status"] == "completed" and j["value"] is not None]
    optuna = optimization_results(sweep_dir) if SWEEP.dir is not None else None
    if optuna and "best_value" in optuna:
        best_job = min(done, key=lambda j: abs(j["value"] - optuna["best_value"]), default=None)
        summary["best"] = {"value": optuna["best_value"], "params": optuna.get("best_params", {}),
                           "direction": SWEEP.direction, "metric": best_job and best_job["metric"],
                           "dir": best_job and best_job["dir"]}
    elif done and len({j["metric"] for j in done}) == 1:
        direction = natural_direction(done[0]["metric"])
        best_job = (min if direction == "minimize" else max)(done, key=lambda j: j["value"])
        summary["best"] = {"value": best_job["value"], "params": {}, "direction": direction,
                           "metric": best_job["metric"], "dir": best_job["dir"]}
    atomic_write_text(sweep_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    for j in jobs:
        print(f"ptcli: job {j['dir']}: {j['status']}  {' '.join(j['overrides'])}", file=sys.stderr)
        if j["status"] != "completed" and j["error"]:  # (a job in another process logged it elsewhere)
            print(f"ptcli:   error: {str(j['error']).splitlines()[0]}", file=sys.stderr)
    print(f"ptcli: sweep {sweep_dir}: {summary['total'] - summary['failed']}/{summary['total']} completed",
          file=sys.stderr)
    best = summary.get("best")
    if best and best["metric"]:
        params = " ".join(f"{k}={v}" for k, v in best["params"].items())
        print(f"ptcli: best job {best['dir']}: {best['metric']}={best['value']:.6g} ({best['direction']})"
              f"{'  ' + params if params else ''}", file=sys.stderr)
        if best["direction"] and best["direction"] != natural_direction(best["metric"]):
            print(f"ptcli: warning: the sweeper's direction is {best['direction']}, but {best['metric']} "
                  f"should be {natural_direction(best['metric'])}d: set hydra.sweeper.direction", file=sys.stderr)
    if json_out:
        from ptcli.tasks import print_json

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

        from ptcli.rundir import unique_run_dir

        # Rank 0 takes a free name (exclusive mkdir, as the default hydra.run.dir does) and tells the others.
        base = f"outputs/{command}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        run_dir = distributed.broadcast_object(unique_run_dir(base) if distributed.is_main() else None)
        args = [*args, f"hydra.run.dir={run_dir}"]
    if not distributed.is_main():
        args = [*args, "hydra.job_logging.root.handlers=[console]"]
    return args


def _resume_in_place(args: list[str]) -> list[str]:
    """``resume=RUN_DIR`` continues that run in its own directory, not in a new timestamped one, with the
    overrides it was started with (``run.json``) applied before the user's: ``resume=RUN`` alone resumes the
    run as it was started, and an override given again (``trainer.max_steps=N``) wins over the stored one."""
    resume = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not resume or resume[-1] in ("", "null"):
        return args
    if any(a in ("-m", "--multirun") for a in args):
        return args  # a sweep's jobs resume themselves (tasks._rerun_sweep_job)
    user = [a for a in args if not a.startswith("-") and "=" in a or a.startswith("~")]
    stored = _merge_stored_overrides(stored_overrides(Path(resume[-1])), user)
    if stored:
        print(f"ptcli: resume={resume[-1]}: with its overrides {' '.join(stored)}", file=sys.stderr)
    if not any(a.startswith("hydra.run.dir=") for a in args):
        stored.append(f"hydra.run.dir={resume[-1]}")
    # First in the run of overrides that holds resume=: Hydra's parser takes the overrides as one run of
    # positional arguments, and the user's come after the stored ones.
    at = max(i for i, a in enumerate(args) if a.startswith("resume="))
    while at > 0 and not args[at - 1].startswith("-") and ("=" in args[at - 1] or args[at - 1].startswith("~")):
        at -= 1
    return [*args[:at], *stored, *args[at:]]


_OVERRIDE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:[./][A-Za-z_][A-Za-z0-9_-]*)*")


def stored_overrides(run_dir: Path) -> list[str]:
    """The overrides a run was started with, from its ``run.json``, checked as untrusted input (the directory
    may come from anyone): only plain ``key=value``, ``group=option``, ``+key=value``, ``++key=value`` and
    ``~key`` forms, none touching ``hydra``, naming a ``_target_`` or holding a ``${...}`` interpolation.
    A missing or unreadable ``run.json`` gives no overrides: ``RunDir.resume`` reports it."""
    manifest_path = run_dir / "run.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    overrides = manifest.get("overrides", []) if isinstance(manifest, dict) else []
    if not isinstance(overrides, list):
        raise UsageError(f"resume={run_dir}: {manifest_path} is malformed: 'overrides' must be a list of strings. "
                         "The run directory is damaged; resume a run written by ptcli.")
    out = []
    for ov in overrides:
        why = _unsafe_override(ov)
        if why:
            raise UsageError(f"resume={run_dir}: {manifest_path} holds the override {ov!r}, which is refused: {why}. "
                             "Stored overrides are replayed on resume and a run directory may come from anyone, "
                             "so only plain key=value, group=option, +key=value and ~key forms are accepted; "
                             "remove it from 'overrides' in run.json (and pass it yourself if you trust it).")
        if not ov.startswith("resume="):  # the user's own resume= names the run
            out.append(ov)
    return out


def _unsafe_override(ov: object) -> str | None:
    """Why a stored override may not be replayed, or None if it may."""
    if not isinstance(ov, str):
        return "not a string"
    if ov.startswith("-"):
        return "it is a command-line flag, not an override"
    if "${" in ov:
        return "it holds an interpolation (${...}), which could read the environment or other files"
    if "_target_" in ov:
        return "it names a _target_, which could instantiate arbitrary code"
    if any(ord(c) < 32 for c in ov):
        return "it holds control characters"
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(ov)
    except HydraException:
        return "it is not a valid override"
    key = parsed.key_or_group
    if parsed.package is not None or not _OVERRIDE_KEY.fullmatch(key):
        return "its key is not a plain dotted key or group name"
    if re.split(r"[./]", key)[0] == "hydra":
        return "it changes Hydra's own settings (hydra.*), which decide where and how the run executes"
    if parsed.is_sweep_override():
        return "it is a sweep (several values), which a single run never has"
    return None


def _merge_stored_overrides(stored: list[str], user: list[str]) -> list[str]:
    """The stored overrides the user does not set again (the user's explicit ones win). A stored ``+key=v``
    stays when the user changes the same key with ``key=w``: that change needs the key the ``+`` added."""
    def key(ov: str) -> str:
        return ov.lstrip("+~").split("=", 1)[0]

    users = {key(o): o for o in user}
    kept = []
    for ov in stored:
        mine = users.get(key(ov))
        if mine is None or (ov.startswith("+") and not mine.startswith(("+", "~"))):
            kept.append(ov)
    return kept


def _quiet_libraries() -> None:
    """Library progress bars would drown ptcli's own progress in CI logs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    if debug_enabled():
        return
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    else:
        # Read by datasets when (if) a run imports it: importing it here only for this would cost every command,
        # image runs and config errors included, ~1 s of start-up.
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["DATASETS_VERBOSITY"] = "error"


def _report(exc: BaseException, cause: BaseException | None = None, run_dir: str | Path | None = None) -> None:
    from ptcli.tasks import report_error

    report_error(exc, cause, run_dir)


# Hydra's own flags (``hydra/_internal/utils.py: get_args_parser``); the ones in VALUED take a value.
HYDRA_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-p", "--package", "-i", "--info", "-r",
               "--run", "-m", "--multirun", "--shell-completion", "-cn", "--config-name", "-cp", "--config-path",
               "-cd", "--config-dir", "--experimental-rerun", "--resolve"}
VALUED = {"-c", "--cfg", "-p", "--package", "-i", "--info", "-cn", "--config-name", "-cp", "--config-path", "-cd",
          "--config-dir", "--experimental-rerun"}


def _check_flags(args: list[str]) -> None:
    """An unknown ``--flag`` would reach Hydra's argparse, which prints its own usage block; name it instead."""
    after_flag = False
    for arg in args:
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and not after_flag and name not in HYDRA_FLAGS:
            raise UsageError(f"unknown option '{arg}'. Options: --json and Hydra's {', '.join(sorted(HYDRA_FLAGS))}; "
                             "overrides are key=value (ptcli pretrain --help).")
        after_flag = name in VALUED and "=" not in arg and not after_flag


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
        owners = _sources_with(leaf) if parent == "data" else []
        if owners:  # a key of another data source (one schema per source): say which sources have it
            msg += f" '{leaf}' is a key of {', '.join('data=' + o for o in owners)}."
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


def _sources_with(key: str) -> list[str]:
    from dataclasses import fields

    from ptcli.data.sources import SOURCE_SCHEMAS

    return [name for name, schema in SOURCE_SCHEMAS.items() if key in {f.name for f in fields(schema)}]


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
