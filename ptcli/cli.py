"""The ``ptcli`` command line.

Start-up stays fast (``--help`` imports neither torch nor Hydra): each verb imports its machinery only
when it runs. The training verbs hand their arguments to Hydra's own parser, so the whole override
grammar and Hydra's flags behave exactly as in any Hydra app.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ptcli import __version__

HYDRA_HELP = """
[bold]Overrides[/bold] use Hydra's grammar: [cyan]key=value[/cyan], [cyan]group=option[/cyan],
[cyan]+key=value[/cyan] (add), [cyan]~key[/cyan] (delete),
[cyan]key=a,b[/cyan] or [cyan]key=range(1,4)[/cyan] with [cyan]-m[/cyan] (sweep).

[bold]Config groups[/bold]: model (transformer, convnet, vit),
objective (mlm, electra, simclr, byol, vicreg, barlow_twins, mae),
data (pydocs, text, hf, digits, images),
trainer (default, finetune), optim (adamw), schedule (cosine, linear, constant), debug (smoke),
experiment (presets: ptcli configs list; yours via --config-dir).

[bold]Hydra options[/bold] (passed through to Hydra):
  -m, --multirun            run a sweep over comma-separated values
  -c, --cfg job|hydra|all   print the composed config and exit
  -p, --package PKG         with --cfg: print only this package
  --resolve                 with --cfg: resolve interpolations
  -i, --info [all|config|defaults|defaults-tree|plugins|searchpath]
  -cd, --config-dir DIR     add a directory of your own config groups / experiments
  -cn, --config-name NAME   use another primary config
  --hydra-help              Hydra's own help

Set PTCLI_DEBUG=1 to see full tracebacks for errors.
"""

app = typer.Typer(
    name="ptcli",
    pretty_exceptions_enable=False,
    help="Pre-train neural networks on unlabeled data, then fine-tune them on few labels.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

PASSTHROUGH = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "help_option_names": ["--help"],
}

GROUPS = ("model", "objective", "data", "trainer", "optim", "schedule", "debug", "experiment")
COMMON_KEYS = ("seed=", "pretrained=", "init=", "resume=", "freeze_encoder=", "logger=", "trainer.max_steps=",
               "trainer.batch_size=", "data.labels_per_class=", "data.train=", "optim.lr=", "hydra.run.dir=")


def complete_overrides(incomplete: str) -> list[str]:
    """Shell completion for overrides: ``model=<TAB>`` lists conf/model/*.yaml; no Hydra import needed."""
    from ptcli.launch import conf_dir

    root = conf_dir()
    group, eq, prefix = incomplete.partition("=")
    if eq and group.lstrip("+~") in GROUPS:
        options = sorted(p.stem for p in (root / group.lstrip("+~")).glob("*.yaml"))
        return [f"{group}={o}" for o in options if o.startswith(prefix)]
    candidates = [f"{g}=" for g in GROUPS] + list(COMMON_KEYS)
    return [c for c in candidates if c.startswith(incomplete)]


JsonOpt = typer.Option(False, "--json", help="Print the final metrics as one JSON object on stdout, and nothing else.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ptcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Pre-train neural networks on unlabeled data, then fine-tune them on few labels."""


def _guarded(fn: Callable[[], int | None]) -> int:
    """Run a verb and map what it raises to the contract's exit codes: the user's errors exit 2 with one
    ``ptcli: error:`` paragraph, anything unexpected exits 1 as an internal error with the traceback saved to a
    file (never printed raw, never taken for a config error)."""
    from ptcli.errors import PtcliError, UsageError

    try:
        return fn() or 0
    except (typer.Exit, SystemExit):
        raise
    except PtcliError as exc:
        typer.echo(f"ptcli: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        typer.echo("ptcli: interrupted", err=True)
        return 130
    except Exception as exc:
        from ptcli.errors import debug_enabled, internal_error_message

        if debug_enabled():
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        if isinstance(exc, OSError) and exc.filename is not None:  # a path the user named: theirs to fix
            typer.echo(f"ptcli: error: {UsageError(_os_error(exc))}", err=True)
            return 2
        typer.echo(internal_error_message(exc), err=True)
        return 1


def _os_error(exc: OSError) -> str:
    return f"cannot read or write '{exc.filename}': {exc.strerror or exc}. Check the path and its permissions."


def _hydra(command: str, ctx: typer.Context, overrides: list[str] | None, json_out: bool) -> None:
    from ptcli.launch import launch

    args = list(overrides or []) + list(ctx.args)
    raise typer.Exit(_guarded(lambda: launch(command, args, json_out=json_out)))


def _overrides(example: str) -> Any:
    """The OVERRIDES argument of a training verb, with an example in its help."""
    return typer.Argument(None, help=f"Hydra overrides, e.g. {example}", autocompletion=complete_overrides)


def _training_verb(command: str, example: str, doc: str) -> None:
    """Register ``ptcli COMMAND [OVERRIDES]...`` (pretrain, finetune: the same options, a different config)."""
    def verb(ctx: typer.Context, overrides: list[str] | None = _overrides(example), json_out: bool = JsonOpt) -> None:
        _hydra(command, ctx, overrides, json_out)

    verb.__doc__ = doc
    app.command(command, context_settings=PASSTHROUGH, epilog=HYDRA_HELP)(verb)


_training_verb("pretrain", "model.dim=128 trainer.max_steps=500",
               "Pre-train an encoder on unlabeled data (default: a transformer, MLM, on Python's docstrings).")
_training_verb("finetune", "pretrained=outputs/pretrain/... data.labels_per_class=16",
               "Train a classifier on labeled data, from a pretrain run (pretrained=RUN_DIR) or random init.")


@app.command(context_settings=PASSTHROUGH, epilog=HYDRA_HELP)
def evaluate(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    overrides: list[str] | None = _overrides("data=text data.test=test.csv"),
    json_out: bool = JsonOpt,
) -> None:
    """Score a finished run on held-out data (the test split unless overrides point elsewhere)."""
    from ptcli.launch import launch

    args = [f"run_dir={_quote(str(run_dir))}"] + list(overrides or []) + list(ctx.args)
    raise typer.Exit(_guarded(lambda: launch("evaluate", args, json_out=json_out)))


HEADSTART_HELP = """
[bold]Overrides[/bold] (Hydra's grammar) apply to every fine-tune: [cyan]data=text data.train=t.csv[/cyan],
[cyan]trainer.max_steps=100[/cyan], [cyan]hydra/launcher=joblib[/cyan], [cyan]hydra.sweep.dir=DIR[/cyan];
[cyan]-cd/--config-dir DIR[/cyan] adds your config groups. init, seed and data.labels_per_class are swept here.

Writes headstart.json, headstart.md, label_efficiency.png and summary.json to
multirun/headstart/<run>-<data>-<hash>; the same command again resumes the sweep.
"""


@app.command(context_settings=PASSTHROUGH, epilog=HEADSTART_HELP)
def headstart(
    ctx: typer.Context,
    overrides: list[str] | None = _overrides("pretrained=outputs/pretrain/<ts> data=pydocs"),
    budgets: str = typer.Option("1,4,16,64,all", "--budgets", help="Labels per class to fine-tune on; all = every "
                                "label."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Seeds per budget and init (mean ± std over them)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result (headstart.json) as one JSON object "
                                  "on stdout, and nothing else."),
) -> None:
    """Fine-tune pretrained=RUN_DIR and random init over label budgets and seeds (one sweep; the same command
    resumes it): accuracy table, head start, label multiplier, label_efficiency.png."""
    from ptcli.headstart import run_headstart

    args = list(overrides or []) + list(ctx.args)
    raise typer.Exit(_guarded(lambda: run_headstart(args, budgets, seeds, json_out)))


@app.command()
def report(
    dirs: list[Path] = typer.Argument(..., help="Directories to search (recursively) for run directories."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: the first DIR)."),
) -> None:
    """Aggregate runs into a table (mean ± std over seeds), report.csv, report.md and PNG plots."""

    def run() -> None:
        from ptcli.errors import UsageError
        from ptcli.report import build_report, print_report

        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise UsageError(f"not a directory: {', '.join(missing)}. Pass folders that hold run directories.")
        print_report(build_report(dirs, out or dirs[0]))

    raise typer.Exit(_guarded(run))


@app.command()
def runs(
    directory: Path = typer.Argument(Path("."), help="Where to look for run directories (recursively)."),
    json_out: bool = JsonOpt,
) -> None:
    """List runs, newest first: command, status, key metric, steps, duration, directory."""

    def run() -> None:
        from ptcli.errors import UsageError
        from ptcli.runs import list_runs, print_runs, warn_unreadable

        if not directory.is_dir():
            raise UsageError(f"not a directory: {directory}. Pass a folder that holds run directories.")
        rows = list_runs(directory)
        warn_unreadable(rows)
        if json_out:
            import json

            typer.echo(json.dumps(rows))
        else:
            print_runs(rows)

    raise typer.Exit(_guarded(run))


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="An MLM pretrain run directory."),
    format: str = typer.Option("hf", "--format", help="Output format: hf (a transformers directory)."),
    out: Path = typer.Option(..., "--out", help="Directory to write (must not exist, unless --force)."),
    force: bool = typer.Option(False, "--force", help="Write into an existing --out (files of the same name are "
                               "replaced; a file at --out is removed)."),
) -> None:
    """Write a Hugging Face transformers directory (AutoModelForMaskedLM + AutoTokenizer load it offline)."""

    def run() -> None:
        from ptcli.errors import UsageError

        if format != "hf":
            raise UsageError(f"--format {format!r} is not supported; use --format hf")
        from ptcli.export import export_hf

        export_hf(run_dir, out, force=force)
        typer.echo(f"ptcli: wrote {out}", err=True)

    raise typer.Exit(_guarded(run))


@app.command()
def embed(
    run_dir: Path = typer.Argument(..., help="A pretrain or finetune run directory."),
    input: Path = typer.Option(..., "--input", help="Texts (csv/tsv/json/jsonl/parquet/txt) or images (folder/.npz)."),
    out: Path = typer.Option(..., "--out", help="Output .npy ([N, dim] float32) or .parquet."),
    text_column: str = typer.Option("text", "--text-column", help="Text column of tabular input."),
) -> None:
    """Write pooled encoder embeddings, one row per input text or image (heads dropped)."""

    def run() -> None:
        from ptcli.embed import embed as run_embed
        from ptcli.launch import _quiet_libraries

        _quiet_libraries()

        n = run_embed(run_dir, input, out, text_column)
        typer.echo(f"ptcli: wrote {n} embeddings to {out}", err=True)

    raise typer.Exit(_guarded(run))


configs_app = typer.Typer(help="List config groups, options and experiment presets; show, copy or validate one.",
                          no_args_is_help=True)
app.add_typer(configs_app, name="configs")
ConfigDirOpt = typer.Option(None, "--config-dir", "-cd", help="Your own config directory (as for the training verbs).")


@configs_app.command("list")
def configs_list(
    config_dir: Path | None = ConfigDirOpt,
    json_out: bool = typer.Option(False, "--json", help="Print the groups and options as one JSON object."),
) -> None:
    """Every config group, its options (defaults marked) and the experiment presets, one line on each."""

    def run() -> None:
        from ptcli.configs import catalog, format_catalog

        groups = catalog(config_dir)
        if json_out:
            import json

            typer.echo(json.dumps({g: [o.to_json() for o in opts] for g, opts in groups.items()}))
        else:
            typer.echo(format_catalog(groups))

    raise typer.Exit(_guarded(run))


@configs_app.command("show")
def configs_show(
    name: str = typer.Argument(..., help="GROUP/NAME, e.g. model/transformer or experiment/pretrain_mlm_long."),
    config_dir: Path | None = ConfigDirOpt,
) -> None:
    """Print one option's YAML file as shipped (comments included)."""

    def run() -> None:
        from ptcli.configs import show

        typer.echo(show(name, config_dir), nl=False)

    raise typer.Exit(_guarded(run))


@configs_app.command("copy")
def configs_copy(
    name: str = typer.Argument(..., help="GROUP/NAME to copy."),
    dest: Path = typer.Argument(..., help="A config directory (the copy goes to DEST/GROUP/) or a .yaml file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Copy an option or preset as a starting point for --config-dir (like torchtune's `tune cp`)."""

    def run() -> None:
        from ptcli.configs import copy

        target, hint = copy(name, dest, force=force)
        typer.echo(f"ptcli: wrote {target}. {hint}", err=True)

    raise typer.Exit(_guarded(run))


@configs_app.command("validate")
def configs_validate(
    file: Path = typer.Argument(..., help="A run's config.yaml, or an option file such as myconf/model/wide.yaml."),
    group: str | None = typer.Option(None, "--group", help="The option file's config group (default: its folder)."),
    config_dir: Path | None = ConfigDirOpt,
) -> None:
    """Check a config file against ptcli's schemas: exit 0, or 2 naming the bad key."""

    def run() -> None:
        from ptcli.configs import validate

        typer.echo(validate(file, group, config_dir))

    raise typer.Exit(_guarded(run))


def _quote(value: str) -> str:
    # Paths with Hydra grammar characters (=, comma, spaces, ...) must be quoted to stay one value.
    if any(c in value for c in " ,=[]{}()'\"\\:$"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return value


def _normalize_info(argv: list[str]) -> list[str]:
    """Hydra's ``--info`` takes an optional value; give Click an explicit one."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in ("--info", "-i"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("-") or "=" in nxt:
                out.append("all")
    return out


def main() -> None:
    sys.argv = sys.argv[:1] + _normalize_info(sys.argv[1:])
    app(prog_name="ptcli")


if __name__ == "__main__":
    main()
