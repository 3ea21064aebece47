"""``ptcli headstart``: what pre-training buys, in labels, from one command.

It runs ``ptcli finetune -m`` over ``init=pretrained,random`` x label budgets x seeds as one Hydra sweep (so
launchers, ``summary.json`` and the re-run that skips completed jobs work as for any sweep), then reads the jobs'
run directories and reports, per budget, both inits' accuracy (mean ± std over seeds), the head start, and the
label multiplier: how many times the labels random init needs to reach the pre-trained model's accuracy at that
budget, interpolated on random init's accuracy-vs-log(labels per class) curve.

The default sweep directory is named after the pretrained run, the data and a hash of what defines the jobs,
not a timestamp: the same command run again (after an interrupt, a failed job, or to print the table once more)
finds its own sweep and re-runs only what did not complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ptcli.errors import UsageError

DEFAULT_BUDGETS = "1,4,16,64,all"
DEFAULT_SEEDS = "0,1,2"
INITS = ("pretrained", "random")
# The keys headstart sweeps itself: a user's value would fight the sweep.
SWEPT = {"init": "init", "seed": "--seeds", "data.labels_per_class": "--budgets"}
# Hydra flags that still make sense for a sweep ptcli runs on the user's behalf; the others print a config
# instead of running (--cfg, --info) or pick another app (--config-name).
ALLOWED_FLAGS = {"-cd", "--config-dir", "-m", "--multirun"}
METRICS = ("test/accuracy", "val/accuracy")  # the first that every completed job reports


@dataclass
class Plan:
    """The sweep to run: the user's overrides plus the swept keys, and where it writes."""

    pretrained: str  # as given: a run directory or hf:NAME_OR_DIR
    budgets: list[int | None]
    seeds: list[int]
    sweep_dir: Path
    args: list[str]  # the ``ptcli finetune`` arguments
    data: str | None = None  # the user's data= option, if any


@dataclass
class Point:
    """One (init, budget) cell: the jobs' metric values and labeled examples per class."""

    values: list[float] = field(default_factory=list)
    per_class: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        import statistics

        n = len(self.values)
        if not n:
            return {"mean": None, "std": None, "n": 0}
        # The sample std, as ``ptcli report`` gives (0 for one seed).
        return {"mean": statistics.fmean(self.values), "std": statistics.stdev(self.values) if n > 1 else 0.0, "n": n}


def parse_budgets(text: str) -> list[int | None]:
    """``1,4,16,all`` -> [1, 4, 16, None]: positive labels per class, ``all`` (or ``null``) for every label;
    ascending, ``all`` last."""
    out: list[int | None] = []
    for part in (p.strip() for p in str(text).strip("[] ").split(",")):
        if part.lower() in ("all", "null", "none"):
            value: int | None = None
        else:
            try:
                value = int(part)
            except ValueError:
                value = 0
            if value <= 0:
                raise UsageError(f"--budgets {text}: {part!r} is not a positive number of labels per class or "
                                 "'all'. Example: --budgets 1,4,16,64,all")
        if value in out:
            raise UsageError(f"--budgets {text}: {part} is given twice.")
        out.append(value)
    return sorted(out, key=lambda b: math.inf if b is None else b)


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]."""
    try:
        seeds = [int(p) for p in str(text).strip("[] ").split(",")]
    except ValueError:
        raise UsageError(f"--seeds {text}: expected comma-separated integers, e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds {text}: seeds must be distinct and non-negative.")
    return seeds


def _budget_value(b: int | None) -> str:
    return "null" if b is None else str(b)


def plan(args: list[str], budgets: list[int | None], seeds: list[int]) -> Plan:
    """Check the user's arguments and turn them into the ``ptcli finetune -m`` arguments of the sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    flags, overrides, values = [], [], {}
    it = iter(args)
    for arg in it:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            if name not in ALLOWED_FLAGS:
                raise UsageError(f"ptcli headstart does not take '{arg}'. It runs a sweep of fine-tunes; to see "
                                 "one fine-tune's config use ptcli finetune ... --cfg job. Options: --budgets, "
                                 "--seeds, --json, --config-dir.")
            if name in ("-cd", "--config-dir"):
                flags += [arg] if "=" in arg else [arg, next(it, "")]
            continue  # -m: headstart always sweeps
        try:
            o = parser.parse_override(arg)
        except HydraException as exc:
            raise UsageError(f"override {arg!r}: {' '.join(str(exc).split())}") from None
        key = o.key_or_group
        if key in SWEPT:
            what = "init=pretrained,random" if key == "init" else f"its own {SWEPT[key]} option"
            raise UsageError(f"'{arg}': ptcli headstart sweeps {key} itself ({what}); drop the override.")
        if o.is_sweep_override():
            raise UsageError(f"'{arg}' is a sweep; ptcli headstart sweeps only init, budgets and seeds. Run one "
                             "headstart per value.")
        values[key] = None if o.value_type is None else str(o.value())
        overrides.append(arg)
    pretrained = values.get("pretrained")
    if not pretrained:
        raise UsageError("ptcli headstart needs pretrained=RUN_DIR (a ptcli pretrain run) or "
                         "pretrained=hf:NAME_OR_DIR (a transformers checkpoint).")
    if not pretrained.startswith("hf:"):
        from ptcli.rundir import RunDir

        command = RunDir.load(pretrained).manifest.get("command")
        if command != "pretrain":
            raise UsageError(f"pretrained={pretrained} is a '{command}' run; pass a pretrain run directory.")
    sweep_dir = values.get("hydra.sweep.dir")
    if not sweep_dir:
        sweep_dir = str(default_sweep_dir(pretrained, values.get("data"), overrides, budgets, seeds))
        overrides.append(f"hydra.sweep.dir={_quote(sweep_dir)}")
    swept = [f"init={','.join(INITS)}", f"data.labels_per_class={','.join(map(_budget_value, budgets))}",
             f"seed={','.join(map(str, seeds))}"]
    return Plan(pretrained, budgets, seeds, Path(sweep_dir), [*flags, "-m", *overrides, *swept],
                data=values.get("data"))


def default_sweep_dir(pretrained: str, data: str | None, overrides: list[str], budgets: list[int | None],
                      seeds: list[int]) -> Path:
    """``multirun/headstart/<pretrained run>-<data>-<hash>``: the same jobs give the same directory. Hydra's own
    settings (launcher, its options) are left out of the hash: they change where jobs run, not what they are."""
    source = pretrained if pretrained.startswith("hf:") else str(Path(pretrained).resolve())
    jobs = sorted(o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/", "pretrained=")))
    digest = hashlib.sha1(json.dumps([source, jobs, budgets, seeds]).encode()).hexdigest()[:8]
    name = Path(pretrained[3:] if pretrained.startswith("hf:") else source).name or "pretrained"
    return Path("multirun", "headstart", f"{_slug(name)}-{_slug(data or 'default')}-{digest}")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


def _quote(value: str) -> str:
    if any(c in value for c in " ,=[]{}()'\"\\:$"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


# -- the table ----------------------------------------------------------------------------------------------


def labels_needed(curve: list[tuple[float, float]], target: float) -> tuple[float | None, str]:
    """Labels per class at which the curve ``[(labels per class, accuracy), ...]`` first reaches ``target``,
    interpolated linearly in log(labels per class), and how to read it: ``"="`` (a crossing), ``"<="`` (already
    there at the smallest budget, so at most that), ``">"`` (never within the largest budget: the value is the
    largest budget, a lower bound)."""
    pts = sorted(curve)
    if not pts:
        return None, ">"
    if pts[0][1] >= target:
        return pts[0][0], "<="
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if y0 < target <= y1:
            t = (target - y0) / (y1 - y0)
            return math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0))), "="
    return pts[-1][0], ">"


def build_rows(points: dict[tuple[str, int | None], Point], budgets: list[int | None]) -> list[dict[str, Any]]:
    """One row per budget: both inits' stats, the head start and the label multiplier (see headstart.json)."""
    def per_class(p: Point | None) -> float | None:
        return sum(p.per_class) / len(p.per_class) if p and p.per_class else None

    curve = []  # random init: (labels per class, mean accuracy)
    for b in budgets:
        p = points.get(("random", b))
        x, mean = per_class(p), (p or Point()).stats()["mean"]
        if x and mean is not None:
            curve.append((x, mean))
    rows = []
    for b in budgets:
        pre, rnd = points.get(("pretrained", b)), points.get(("random", b))
        ps, rs = (pre or Point()).stats(), (rnd or Point()).stats()
        x = per_class(pre) or per_class(rnd)
        row: dict[str, Any] = {"labels_per_class": b, "examples_per_class": x, "pretrained": ps, "random": rs,
                               "head_start": None, "label_multiplier": None, "multiplier_bound": None,
                               "label_multiplier_lower_bound": None, "random_labels_per_class_needed": None,
                               "multiplier_note": "no completed runs"}
        if ps["mean"] is not None and rs["mean"] is not None:
            row["head_start"] = ps["mean"] - rs["mean"]
        if ps["mean"] is not None and x and curve:
            row.update(_multiplier(curve, ps["mean"], x))
        rows.append(row)
    return rows


def _multiplier(curve: list[tuple[float, float]], target: float, labels: float) -> dict[str, Any]:
    """The label-multiplier fields of a row whose pretrained accuracy is ``target`` at ``labels`` per class."""
    needed, bound = labels_needed(curve, target)
    if needed is None:
        return {}
    if bound == ">":
        return {"multiplier_bound": bound, "label_multiplier_lower_bound": needed / labels,
                "multiplier_note": f"random init does not reach it within the largest budget ({_num(needed)} labels "
                                   f"per class): more than {_num(needed / labels)}x the labels"}
    at_most = "at most " if bound == "<=" else ""
    return {"multiplier_bound": bound, "label_multiplier": needed / labels, "random_labels_per_class_needed": needed,
            "multiplier_note": f"random init needs {at_most}{_num(needed / labels)}x the labels ({at_most}"
                               f"{_num(needed)} per class)"}


def _num(v: float) -> str:
    """Two significant digits below 10 (a multiplier of 8.3, 0.25), whole numbers above."""
    return f"{v:.2g}" if v < 10 else f"{v:,.0f}"


def budget_label(row: dict[str, Any]) -> str:
    b, x = row["labels_per_class"], row.get("examples_per_class")
    return str(b) if b is not None else (f"all ({x:,.0f})" if x else "all")


def multiplier_cell(row: dict[str, Any]) -> str:
    bound = row.get("multiplier_bound")
    if bound == ">":
        return f"more than the largest budget (> {_num(row['label_multiplier_lower_bound'])}x)"
    if bound is None:
        return "n/a"
    return f"{'≤ ' if bound == '<=' else ''}{_num(row['label_multiplier'])}x"


def format_table(result: dict[str, Any]) -> str:
    """The label-efficiency table as Markdown (what the command prints, and README quotes)."""
    def cell(s: dict[str, Any]) -> str:
        return "—" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['n']})"

    lines = [f"{result['metric']}, mean ± std over seeds {','.join(map(str, result['seeds']))}; "
             f"pretrained={result['pretrained']} data={result['data']}", "",
             "| labels per class | pretrained | random init | head start (points) | label multiplier |",
             "|---|---|---|---|---|"]
    for row in result["rows"]:
        hs = "—" if row["head_start"] is None else f"{100 * row['head_start']:+.1f}"
        lines.append(f"| {budget_label(row)} | {cell(row['pretrained'])} | {cell(row['random'])} | {hs} | "
                     f"{multiplier_cell(row)} |")
    lines += ["", "label multiplier: the labels random init needs to reach the pretrained accuracy of that row, "
              "as a multiple of the row's labels (interpolated on random init's accuracy vs log(labels per class); "
              "'all' counts as its actual labeled examples per class)."]
    return "\n".join(lines) + "\n"


# -- running it ---------------------------------------------------------------------------------------------


def collect(sweep_dir: Path, budgets: list[int | None], seeds: list[int]) -> tuple[str, dict, list[Path]]:
    """The jobs this sweep completed, as its ``summary.json`` lists them (a job directory holding a run of other
    overrides, which the sweep refused, is not one): (metric, {(init, budget): Point}, job directories)."""
    from ptcli.report import find_runs

    try:
        summary = json.loads((sweep_dir / "summary.json").read_text(encoding="utf-8"))
        done = [sweep_dir / j["dir"] for j in summary["jobs"] if j.get("status") == "completed"]
    except (OSError, ValueError, KeyError, TypeError):
        done = []
    runs = [r for r in find_runs(done) if r.command == "finetune" and r.manifest.get("status") == "completed"
            and r.config.get("init") in INITS and r.config.get("data.labels_per_class") in budgets
            and r.config.get("seed") in seeds]
    metric = next((m for m in METRICS if runs and all(_finite((r.manifest.get("metrics") or {}).get(m))
                                                      for r in runs)), METRICS[0])
    points: dict[tuple[str, int | None], Point] = {}
    for r in runs:
        value = (r.manifest.get("metrics") or {}).get(metric)
        if not _finite(value):
            continue
        p = points.setdefault((r.config["init"], r.config["data.labels_per_class"]), Point())
        p.values.append(float(value))
        data = r.manifest.get("data") or {}
        if data.get("classes") and data.get("train_examples"):
            p.per_class.append(data["train_examples"] / data["classes"])
    return metric, points, [r.path for r in runs]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _data_name(user: str | None, jobs: list[Path], pretrained: str) -> str:
    """The data option the jobs fine-tuned on: the user's ``data=``, else the jobs' Hydra choice, except where
    an image fine-tune took the pretrain run's data (``ptcli.runconfig``): then the pretrain run's choice."""
    if user:
        return user
    if not jobs:
        return "default"
    import yaml

    def choice_and_target(run: Path) -> tuple[str | None, str | None]:
        try:
            choice = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]["runtime"]["choices"]
            target = yaml.safe_load((run / "config.yaml").read_text())["data"]["_target_"]
            return choice.get("data"), target
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None, None

    job_choice, job_target = choice_and_target(jobs[0])
    if not pretrained.startswith("hf:"):
        pre_choice, pre_target = choice_and_target(Path(pretrained))
        if pre_target and pre_target == job_target:
            return pre_choice or job_choice or "default"
    return job_choice or "default"


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy vs labels per class (log axis), pretrained and random init with ± std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ticks: dict[float, str] = {}
    for init, style in (("pretrained", "o-"), ("random", "s--")):
        pts = [(r["examples_per_class"], r[init]["mean"], r[init]["std"]) for r in result["rows"]
               if r[init]["mean"] is not None and r["examples_per_class"]]
        if pts:
            ax.errorbar(*zip(*[(x, m) for x, m, _ in pts], strict=True), yerr=[s for *_, s in pts], fmt=style,
                        capsize=3, label="pre-trained" if init == "pretrained" else "random init")
    for r in result["rows"]:
        if r["examples_per_class"]:
            ticks[r["examples_per_class"]] = budget_label(r)
        if r["multiplier_bound"] == "=" and r["label_multiplier"] > 1:  # the multiplier, drawn: labels to catch up
            x, y, needed = r["examples_per_class"], r["pretrained"]["mean"], r["random_labels_per_class_needed"]
            ax.annotate("", xy=(needed, y), xytext=(x, y), arrowprops={"arrowstyle": "->", "color": "gray",
                                                                       "linestyle": ":"})
            ax.text(math.sqrt(x * needed), y, f"{_num(r['label_multiplier'])}x", color="gray", fontsize=8,
                    ha="center", va="bottom")
    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.minorticks_off()
    ax.set_xlabel("labels per class (log scale)")
    ax.set_ylabel(f"{result['metric']} (mean ± std over seeds)")
    ax.set_title(f"Label efficiency: {Path(result['pretrained']).name} on {result['data']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_headstart(args: list[str], budgets: str = DEFAULT_BUDGETS, seeds: str = DEFAULT_SEEDS,
                  json_out: bool = False) -> int:
    """Run (or resume) the sweep, then write headstart.json, headstart.md and label_efficiency.png into the
    sweep directory (headstart.json also into the pretrain run) and print the table; the exit code."""
    from ptcli.launch import launch
    from ptcli.rundir import atomic_write_text

    p = plan(args, parse_budgets(budgets), parse_seeds(seeds))
    started = time.time()
    print(f"ptcli: headstart: {len(INITS) * len(p.budgets) * len(p.seeds)} fine-tunes in {p.sweep_dir} (the same "
          "command run again resumes this sweep)", file=sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the table's (or the JSON's) alone
        code = launch("finetune", p.args)
    if code in (2, 130, 143):  # a config error before any job, or the user stopped it
        if code != 2:
            print(f"ptcli: headstart interrupted; run the same command again to resume {p.sweep_dir}",
                  file=sys.stderr)
        return code
    metric, points, jobs = collect(p.sweep_dir, p.budgets, p.seeds)
    if not jobs:
        print(f"ptcli: headstart: no fine-tune in {p.sweep_dir} completed; see the errors above", file=sys.stderr)
        return code or 1
    result = {"pretrained": p.pretrained, "data": _data_name(p.data, jobs, p.pretrained), "metric": metric,
              "budgets": p.budgets, "seeds": p.seeds, "rows": build_rows(points, p.budgets),
              "sweep_dir": str(p.sweep_dir), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "elapsed_s": round(time.time() - started, 1), "jobs_compute_s": _compute_s(jobs),
              "jobs": {"completed": len(jobs), "total": len(INITS) * len(p.budgets) * len(p.seeds)}}
    text = json.dumps(result, indent=2) + "\n"
    atomic_write_text(p.sweep_dir / "headstart.json", text)
    atomic_write_text(p.sweep_dir / "headstart.md", format_table(result))
    plot(result, p.sweep_dir / "label_efficiency.png")
    if not p.pretrained.startswith("hf:"):  # for `ptcli export`'s model card
        try:
            atomic_write_text(Path(p.pretrained) / "headstart.json", text)
        except OSError as exc:
            print(f"ptcli: warning: could not copy headstart.json into {p.pretrained}: {exc}", file=sys.stderr)
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(format_table(result))
    print(f"ptcli: wrote headstart.json, headstart.md, label_efficiency.png to {p.sweep_dir}", file=sys.stderr)
    if result["jobs"]["completed"] < result["jobs"]["total"]:
        print(f"ptcli: headstart: {result['jobs']['completed']}/{result['jobs']['total']} fine-tunes completed; "
              "the table holds those; run the same command again to re-run the others", file=sys.stderr)
        return code or 1
    return code


def _compute_s(jobs: list[Path]) -> float:
    """Total run time of the jobs (from their run.json), whether this invocation or an earlier one ran them."""
    total = 0.0
    for job in jobs:
        with contextlib.suppress(OSError, ValueError):
            total += float(json.loads((job / "run.json").read_text()).get("duration_s") or 0)
    return round(total, 1)
