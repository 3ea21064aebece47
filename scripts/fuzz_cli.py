"""Fuzz the ptcli command line: generated overrides and malformed data files against every verb.

    python scripts/fuzz_cli.py N [--seed S] [--out scripts/results/fuzz_cli.json] [--subprocess-every K]

Each input is one ``ptcli`` invocation (``debug=smoke``, a tiny model): overrides for every schema key of
``ptcli/config.py`` with wrong types, out-of-range and extreme values, unknown keys, garbage group options,
unicode and empty strings, and malformed data files (binary, empty, one huge line, Latin-1 and UTF-16, ragged CSV,
JSONL with non-object rows, images that are not images) for ``data=text``, ``data=images`` and ``embed --input``,
garbled run directories for ``runs``/``report``/``evaluate``, and odd ``--out`` paths for ``export``/``embed``.

The property (``check``), for every input:
- the exit code is 0, 1 or 2, and no Python traceback and no "internal error" (a bug) reaches the terminal;
- exit 2 printed one ``ptcli: error:`` paragraph (or Click's usage message for a malformed command line);
- the run's ``run.json`` agrees with the exit code: 0 <-> ``completed``; 1 <-> ``failed`` (or no ``run.json``: the
  process failed before the run opened); 2 <-> no ``run.json`` or ``failed`` without checkpoints (the run directory
  was opened, then the config or data was refused);
- no ``completed`` run has a non-finite metric.

Inputs run in-process (``ptcli.cli.main`` with ``sys.argv``, stdout/stderr captured, process state restored
after each), because a subprocess per input costs seconds of imports; every ``--subprocess-every`` K-th input
also runs as a real subprocess and must give the same exit code. Prints a summary (inputs tried, time, exit
codes per verb, failures with their argv) and writes it as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.dim=32", "model.heads=2", "model.layers=2", "model.ffn_dim=64"]
# Fewer steps than debug=smoke alone: most generated inputs are refused, but those that pass train.
FAST = {"trainer.max_steps": "4", "trainer.eval_every": "2", "trainer.log_every": "2", "trainer.eval_batches": "1",
        "data.max_train_examples": "200", "tokenizer.vocab_size": "300"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "disabled", "MLFLOW_TRACKING_URI": ""}
VERBS = ("pretrain", "finetune", "evaluate", "export", "embed", "runs", "report")


# ------------------------------------------------------------------------------------------- schema keys
def schema_keys() -> dict[str, str]:
    """Every key of the structured schemas, dotted, with its kind (int, float, bool, str, list, any)."""
    from ptcli import config as c

    sections = {"": c.RunConfig, "model": (c.TransformerConfig, c.ConvNetConfig),
                "objective": (c.MLMConfig, c.SimCLRConfig, c.BYOLConfig, c.VICRegConfig, c.BarlowTwinsConfig)}
    keys: dict[str, str] = {}

    def kind(tp: Any) -> str:
        tp = typing.get_origin(tp) or tp
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if tp in (int, float, bool, str, list):
            return tp.__name__
        if args and args[0] in (int, float, bool, str):
            return args[0].__name__
        return "list" if tp is list else "any"

    def add(prefix: str, cls: Any) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                add(f"{prefix}{f.name}.", tp)
            elif not (prefix == "" and f.name in ("model", "objective")):
                keys[f"{prefix}{f.name}"] = kind(tp)

    for prefix, classes in sections.items():
        for cls in classes if isinstance(classes, tuple) else (classes,):
            add(f"{prefix}." if prefix else "", cls)
    return keys


# Keys whose valid-but-large values would make a run slow or hungry: only invalid values and small valid ones,
# or values so large that allocation fails at once (never a medium size the machine might try to honour).
BOUNDED = {"trainer.max_steps", "trainer.max_epochs", "trainer.batch_size", "trainer.grad_accum",
           "trainer.eval_batches", "trainer.num_threads", "data.max_train_examples", "data.num_workers",
           "data.shuffle_buffer", "data.val_blocks", "tokenizer.train_examples", "trainer.eval_every",
           "trainer.log_every"}
# Never pointed at the workspace's shared runs (resume writes in place); compile would take minutes on CPU.
UNSAFE = {"resume", "trainer.compile", "run_dir", "command", "logger", "trainer.progress"}

GARBAGE = ["", "abc", "ü€𝔘", "null", "true", "[1,2]", "{a: 1}", "'quoted'", "${oc.env:HOME}", "${nope}", "a,b",
           "range(1,3)", "-", "=", "1e400", "nan", "inf", "-inf", "0x10", "1_000", " ", "\\", "x" * 300, "[]",
           "{}", "'", "\"", "$", "%s", "..", "/", "ptcli.rundir.Path", "builtins.print"]


def value_for(kind: str, key: str) -> st.SearchStrategy[str]:
    ints = st.sampled_from(["0", "-1", "-7", "1", "2", "3", str(2**31), str(2**63), str(-(2**63) - 1), str(10**30)])
    floats = st.sampled_from(["0", "-1.5", "1e-12", "1e30", "-1e30", "nan", "inf", "-inf", "0.5", "1", "2", "1e308"])
    text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
    wrong = st.sampled_from(GARBAGE)
    if key in BOUNDED:
        ints = st.sampled_from(["0", "-1", "1", "2", str(2**63), str(10**30), "-5"])
    options = {"int": [ints, floats, wrong], "float": [floats, ints, wrong], "bool": [wrong, st.sampled_from(
        ["true", "false", "yes", "0", "1"])], "str": [wrong, text], "list": [wrong, st.sampled_from(
        ["[]", "[1]", "[0.9]", "[0.9,0.98,0.1]", "[a,b]", "[nan,nan]", "[-1,2]"])], "any": [wrong, text, ints]}
    return st.one_of(*options.get(kind, [wrong]))


@st.composite
def override(draw: st.DrawFn, keys: dict[str, str]) -> str:
    choice = draw(st.integers(0, 9))
    if choice <= 5:  # a schema key, with a wrong, extreme or odd value
        key = draw(st.sampled_from(sorted(k for k in keys if k not in UNSAFE)))
        return f"{key}={draw(value_for(keys[key], key))}"
    if choice == 6:  # unknown keys, added keys, deletions
        return draw(st.sampled_from(["foo=1", "model.nope=3", "+extra=1", "+trainer.foo=bar", "~model", "~trainer",
                                     "~seed", "trainer=", "+model.dim=3", "data.text_colum=x", "optim.betas.0=2",
                                     "ü=1", "=1", "model..dim=3", "trainer.max_steps", "-x", "--nope"]))
    if choice == 7:  # group options: real, unknown, empty, unicode
        group = draw(st.sampled_from(["model", "objective", "data", "trainer", "optim", "schedule", "debug"]))
        option = draw(st.sampled_from(["transformer", "convnet", "vit", "mlm", "electra", "simclr", "byol", "vicreg",
                                       "barlow_twins", "mae", "text", "images", "hf", "digits",
                                       "pydocs", "default", "finetune", "linear", "constant", "smoke", "", "nope",
                                       "ünï", "../pretrain", "null"]))
        return f"{group}={option}"
    if choice == 8:  # values that pass validation and fail (or not) at run time
        return draw(st.sampled_from(["optim.lr=1e6", "optim.lr=1e30", "optim.lr=0", "objective.mask_rate=0.999",
                                     "trainer.clip_grad=null", "model.dropout=0.99", "schedule.warmup_steps=0",
                                     "trainer.max_steps=1", "trainer.checkpoint_every=1", "trainer.patience=1",
                                     "trainer.precision=bf16", "model.position=learned", "model.bias=true",
                                     "tokenizer.kind=bpe", "trainer.grad_accum=2", "optim.betas=[0.5,0.5]"]))
    return f"{draw(st.sampled_from(['resume', 'pretrained', 'init_from', 'run_dir', 'logger']))}=" + draw(
        st.sampled_from(["", "nope", "/nonexistent/run", "hf:nope/nope", "hf:", "null", "ü", "[tensorboard]",
                         "tensorboard", "[nope]", "{}"]))


# ------------------------------------------------------------------------------------------- data files
TEXT_KINDS = ("binary", "empty", "huge_line", "latin1", "utf16", "ragged_csv", "jsonl_scalars", "nul", "good",
              "header_only", "json_object", "not_parquet")
EXTS = (".csv", ".tsv", ".json", ".jsonl", ".txt", ".parquet", ".xlsx", "")


def write_text_file(path: Path, kind: str, rnd: int) -> Path:
    sentences = [f"the quick brown fox {i} jumps over the lazy dog number {rnd % 97}" for i in range(40)]
    if kind == "binary":
        path.write_bytes(bytes((rnd * 31 + i * 7) % 256 for i in range(4096)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "huge_line":
        path.write_text("text\n" + "word " * 400_000 + "\n")
    elif kind == "latin1":
        path.write_bytes(("text,label\n" + "\n".join(f"café crème {i},{i % 2}" for i in range(30))).encode("latin-1"))
    elif kind == "utf16":
        path.write_bytes(("text\n" + "\n".join(sentences)).encode("utf-16"))
    elif kind == "ragged_csv":
        path.write_text("text,label\n" + "\n".join(",".join(["a b c"] * (1 + i % 4)) for i in range(30)) + "\n")
    elif kind == "jsonl_scalars":
        path.write_text("\n".join(["1", '"str"', "[1, 2]", "null", "true", '{"text": 3}', "{}"] * 5) + "\n")
    elif kind == "nul":
        path.write_bytes(b"text\n" + b"\x00\x00abc\x00\n" * 50)
    elif kind == "header_only":
        path.write_text("text,label\n")
    elif kind == "json_object":
        path.write_text(json.dumps({"text": sentences, "label": [i % 2 for i in range(40)]}))
    elif kind == "not_parquet":
        path.write_bytes(b"PAR1" + b"\x01" * 100 + b"PAR1")
    else:  # good: rows ptcli can read, in the format the extension names
        rows = [{"text": s, "label": i % 3} for i, s in enumerate(sentences * 3)]
        if path.suffix in (".jsonl", ".json"):
            path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        elif path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            sep = "\t" if path.suffix == ".tsv" else ","
            path.write_text(f"text{sep}label\n" + "\n".join(f"{r['text']}{sep}{r['label']}" for r in rows) + "\n")
    return path


IMAGE_KINDS = ("text_as_png", "truncated_png", "empty_files", "mixed", "good", "empty_dir", "npz_garbage")


def write_image_dir(path: Path, kind: str, rnd: int) -> Path:
    from PIL import Image

    def png(p: Path, i: int) -> None:
        Image.new("L", (8, 8), color=(i * 37 + rnd) % 256).save(p)

    if kind == "npz_garbage":
        path = path.with_suffix(".npz")
        path.write_bytes(b"PK\x03\x04 not a zip" * 10)
        return path
    for c in ("a", "b"):
        (path / c).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            f = path / c / f"{i}.png"
            if kind == "text_as_png" or (kind == "mixed" and i % 3 == 0):
                f.write_text("this is not an image")
            elif kind == "truncated_png":
                f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
            elif kind == "empty_files":
                f.write_bytes(b"")
            elif kind != "empty_dir":
                png(f, i)
    return path


@st.composite
def text_file(draw: st.DrawFn, where: Path) -> Path:
    kind, ext = draw(st.sampled_from(TEXT_KINDS)), draw(st.sampled_from(EXTS))
    where.mkdir(parents=True, exist_ok=True)
    return write_text_file(where / f"data-{kind}{ext}", kind, draw(st.integers(0, 10**6)))


@st.composite
def image_dir(draw: st.DrawFn, where: Path) -> Path:
    return write_image_dir(where / "images", draw(st.sampled_from(IMAGE_KINDS)), draw(st.integers(0, 10**6)))


# ------------------------------------------------------------------------------------------- run dirs
def garble(run: Path, dst: Path, how: str) -> Path:
    """A copy of ``run``'s small files (no checkpoints unless needed), damaged as ``how`` says."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("run.json", "config.yaml", "metrics.jsonl"):
        if (run / name).is_file():
            shutil.copy(run / name, dst / name)
    manifest = json.loads((run / "run.json").read_text())
    if how == "torn_json":
        (dst / "run.json").write_text((run / "run.json").read_text()[:40])
    elif how == "list_json":
        (dst / "run.json").write_text("[1, 2, 3]")
    elif how == "binary_json":
        (dst / "run.json").write_bytes(b"\xff\xfe\x00\x01garbage")
    elif how == "metrics_not_dict":
        (dst / "run.json").write_text(json.dumps({**manifest, "metrics": [1, 2]}))
    elif how == "nan_metrics":
        (dst / "run.json").write_text(json.dumps({**manifest, "metrics": {"val/loss": float("nan")}}))
    elif how == "odd_types":
        (dst / "run.json").write_text(json.dumps({**manifest, "started_at": 5, "status": ["x"], "step": "many",
                                                  "duration_s": "long", "command": None}))
    elif how == "config_garbage":
        (dst / "config.yaml").write_text("model: [unclosed\n  - : :\n")
    elif how == "config_list":
        (dst / "config.yaml").write_text("- 1\n- 2\n")
    elif how == "metrics_log_garbage":
        (dst / "metrics.jsonl").write_bytes(b'{"step": 1, "split": "tr\n[]\n\xff\n{"step": "x"}\n')
    elif how == "no_config":
        (dst / "config.yaml").unlink(missing_ok=True)
    elif how == "checkpoint_torn":
        shutil.copytree(run / "checkpoints", dst / "checkpoints")
        for f in (dst / "checkpoints").rglob("model.safetensors"):
            f.write_bytes(f.read_bytes()[:200])
    elif how == "intact":
        if (run / "checkpoints").is_dir():
            shutil.copytree(run / "checkpoints", dst / "checkpoints")
        if (run / "tokenizer").is_dir():
            shutil.copytree(run / "tokenizer", dst / "tokenizer")
    if how != "intact" and (run / "tokenizer").is_dir():
        shutil.copytree(run / "tokenizer", dst / "tokenizer", dirs_exist_ok=True)
    return dst


GARBLE = ("torn_json", "list_json", "binary_json", "metrics_not_dict", "nan_metrics", "odd_types", "config_garbage",
          "config_list", "metrics_log_garbage", "no_config", "checkpoint_torn", "intact")


# ------------------------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    verb: str
    argv: list[str]
    run_dir: Path | None = None  # where a Hydra verb's run directory goes
    out: Path | None = None  # export/embed output

    def describe(self) -> str:
        return " ".join(["ptcli", *self.argv])


class Workspace:
    """A folder of real runs the cases read (never write: evaluate/finetune get their own run dirs)."""

    def __init__(self, root: Path, text_run: Path, image_run: Path | None = None) -> None:
        self.root, self.text_run, self.image_run = root, text_run, image_run
        self.counter = 0
        self.keys = schema_keys()

    def fresh(self, name: str) -> Path:
        self.counter += 1
        path = self.root / "cases" / f"{self.counter:06d}-{name}"
        path.mkdir(parents=True)
        return path


def _merge(base: dict[str, str], overrides: list[str]) -> list[str]:
    # A generated override of a key the base sets replaces it (Hydra refuses the same key twice).
    named = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [f"{k}={v}" for k, v in base.items() if k not in named] + overrides


@st.composite
def cases(draw: st.DrawFn, ws: Workspace, verbs: tuple[str, ...] = VERBS) -> Case:
    verb = draw(st.sampled_from(verbs))
    here = ws.fresh(verb)
    run_dir = here / "run"
    # At least one override: an input without any is a plain smoke run, which the other tests cover.
    overrides = draw(st.lists(override(ws.keys), min_size=1, max_size=3))
    tiny = [t for t in TINY if t.split("=")[0] not in {o.split("=", 1)[0] for o in overrides}]
    tail = [f"hydra.run.dir={run_dir}"]
    if verb == "pretrain":
        data = draw(st.sampled_from(["none", "text", "images"]))
        extra: list[str] = []
        if data == "text":
            extra = ["data=text", f"data.train={draw(text_file(here))}"]
        elif data == "images":
            extra = ["model=convnet", "objective=simclr", "data=images", f"data.path={draw(image_dir(here))}",
                     "data.size=8"]
            tiny = []
        argv = ["pretrain", "debug=smoke", *tiny, *_merge(FAST, extra + overrides), *tail]
        return Case(verb, argv, run_dir)
    if verb == "finetune":
        init = draw(st.sampled_from([f"pretrained={ws.text_run}", "init=random"]))
        extra = []
        if draw(st.booleans()):
            extra = ["data=text", f"data.train={draw(text_file(here))}"]
        base = [] if init.startswith("pretrained") else tiny
        argv = ["finetune", "debug=smoke", init, *base, *_merge(FAST, extra + overrides), *tail]
        return Case(verb, argv, run_dir)
    if verb == "evaluate":
        how = draw(st.sampled_from(["intact", "intact", "torn_json", "config_garbage", "checkpoint_torn", "missing"]))
        target = here / "missing" if how == "missing" else garble(ws.text_run, here / "target", how)
        extra = []
        if draw(st.booleans()):
            extra = ["data=text", f"data.test={draw(text_file(here))}", f"data.train={draw(text_file(here))}"]
        argv = ["evaluate", str(target), "debug=smoke", *_merge({"trainer.eval_batches": "1"}, extra + overrides),
                *tail]
        return Case(verb, argv, run_dir)
    if verb in ("runs", "report"):
        root = here / "runs"
        for i, how in enumerate(draw(st.lists(st.sampled_from(GARBLE), min_size=0, max_size=4))):
            garble(ws.text_run, root / f"r{i}", how)
        root.mkdir(exist_ok=True)
        target = draw(st.sampled_from([str(root), str(root), str(here / "nope"), str(root / "r0" / "run.json")]))
        if verb == "runs":
            return Case(verb, ["runs", target, *(["--json"] if draw(st.booleans()) else [])])
        out = draw(st.sampled_from([None, here / "report", here / "afile"]))
        if out == here / "afile":
            out.write_text("x")
        return Case(verb, ["report", target, *(["--out", str(out)] if out else [])], out=out)
    out = _out_path(draw, here, verb)
    if verb == "export":
        how = draw(st.sampled_from(["intact", "intact", "checkpoint_torn", "torn_json", "missing"]))
        target = here / "missing" if how == "missing" else garble(ws.text_run, here / "target", how)
        fmt = draw(st.sampled_from(["hf", "hf", "onnx", ""]))
        force = ["--force"] if draw(st.booleans()) else []
        return Case(verb, ["export", str(target), "--format", fmt, "--out", str(out), *force], out=out)
    # embed
    image = ws.image_run is not None and draw(st.booleans())
    if image:
        inp = draw(image_dir(here))
        target = ws.image_run
    else:
        inp = draw(st.one_of(text_file(here), st.just(here / "nope.txt"), st.just(here)))
        target = ws.text_run if draw(st.integers(0, 4)) else garble(ws.text_run, here / "target", "torn_json")
    column = ["--text-column", draw(st.sampled_from(["text", "body", "", "ü"]))] if draw(st.booleans()) else []
    return Case(verb, ["embed", str(target), "--input", str(inp), "--out", str(out), *column], out=out)


def _out_path(draw: st.DrawFn, here: Path, verb: str) -> Path:
    kind = draw(st.sampled_from(["new", "new", "existing_dir", "existing_file", "under_file"]))
    suffix = draw(st.sampled_from([".npy", ".npy", ".parquet", ".txt", ""])) if verb == "embed" else ""
    if kind == "existing_dir":
        (here / f"out{suffix}").mkdir()
    elif kind == "existing_file":
        (here / f"out{suffix}").write_text("x")
    elif kind == "under_file":
        (here / "blocker").write_text("x")
        return here / "blocker" / f"out{suffix}"
    return here / f"out{suffix}"


# ------------------------------------------------------------------------------------------- running
@dataclasses.dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    escaped: str | None = None  # an exception that got past ptcli's own handling


def run_inprocess(argv: list[str]) -> Outcome:
    """``ptcli ARGV`` in this process (``ptcli.testing.invoke``: stdout/stderr captured, the exit code from
    SystemExit, the process state a run may change put back); an exception that escapes the CLI is recorded."""
    from ptcli.testing import invoke

    r = invoke(argv, catch=True)
    return Outcome(r.code, r.stdout, r.stderr, r.escaped)


def run_subprocess(argv: list[str], timeout: int = 600) -> Outcome:
    env = {**os.environ, **OFFLINE}
    try:
        proc = subprocess.run([sys.executable, "-m", "ptcli", *argv], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Outcome(None, str(exc.stdout or ""), str(exc.stderr or ""), escaped=f"timeout after {timeout} s")
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def check(case: Case, o: Outcome) -> list[str]:
    """The property; returns what is violated (empty: it holds)."""
    problems = []
    if o.escaped:
        problems.append(f"exception escaped the CLI: {o.escaped.strip().splitlines()[-1]}")
    if o.code not in (0, 1, 2):
        problems.append(f"exit code {o.code}")
    text = o.stdout + o.stderr
    if "Traceback (most recent call last)" in text:
        problems.append("a traceback on the terminal")
    if "internal error" in o.stderr:
        problems.append("internal error: " + next(ln for ln in o.stderr.splitlines() if "internal error" in ln))
    if o.code == 2 and "ptcli: error:" not in o.stderr and "Usage:" not in o.stderr:
        problems.append("exit 2 without a 'ptcli: error:' paragraph")
    if o.code == 2 and o.stderr.count("ptcli: error:") > 1:
        problems.append("exit 2 with more than one 'ptcli: error:' paragraph")
    if case.run_dir is not None:
        manifest_path = case.run_dir / "run.json"
        manifest = None
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError as exc:
                problems.append(f"unreadable run.json: {exc}")
        status = manifest.get("status") if isinstance(manifest, dict) else None
        if o.code == 0 and status != "completed":
            problems.append(f"exit 0 but run.json status {status!r}")
        if o.code == 1 and manifest is not None and status != "failed":
            problems.append(f"exit 1 but run.json status {status!r}")
        if o.code == 2 and manifest is not None:
            if status != "failed":
                problems.append(f"exit 2 but run.json status {status!r}")
            if (case.run_dir / "checkpoints").is_dir() and any((case.run_dir / "checkpoints").iterdir()):
                problems.append("exit 2 but the run wrote checkpoints")
        if status == "completed":
            bad = {k: v for k, v in (manifest.get("metrics") or {}).items()
                   if not (isinstance(v, (int, float)) and math.isfinite(v))}
            if bad:
                problems.append(f"completed run with non-finite metrics {bad}")
    if o.code == 0 and case.verb == "export" and not (case.out and (case.out / "config.json").is_file()):
        problems.append("export exited 0 without writing config.json")
    if o.code == 0 and case.verb == "embed" and not (case.out and case.out.is_file()):
        problems.append("embed exited 0 without writing --out")
    return problems


# ------------------------------------------------------------------------------------------- workspace
def make_workspace(root: Path, text_run: Path | None = None, images: bool = True) -> Workspace:
    """Real tiny runs to evaluate/fine-tune/export/embed from (a text MLM run and, optionally, an image run)."""
    root.mkdir(parents=True, exist_ok=True)
    if text_run is None:
        text_run = root / "text-run"
        if not (text_run / "run.json").is_file():
            o = run_inprocess(["pretrain", "debug=smoke", *TINY, f"hydra.run.dir={text_run}"])
            assert o.code == 0, o.stderr[-3000:]
    image_run = None
    if images:
        image_run = root / "image-run"
        if not (image_run / "run.json").is_file():
            o = run_inprocess(["pretrain", "debug=smoke", "model=convnet", "objective=simclr", "data=digits",
                               "model.width=8", "model.stages=1", f"hydra.run.dir={image_run}"])
            assert o.code == 0, o.stderr[-3000:]
    return Workspace(root, text_run, image_run)


def fuzz(n: int, seed: int, out: Path | None, subprocess_every: int, keep: bool) -> dict[str, Any]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    os.environ.update(OFFLINE)
    tmp = Path(tempfile.mkdtemp(prefix="ptcli-fuzz-"))
    os.environ.setdefault("PTCLI_CACHE", str(tmp / "cache"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(tmp / "hf-cache"))
    t0 = time.time()
    ws = make_workspace(tmp / "ws")
    setup_s = time.time() - t0
    codes: Counter[str] = Counter()
    per_verb: dict[str, Counter[str]] = {}
    failures: list[dict[str, Any]] = []
    mismatches: list[dict[str, Any]] = []
    slowest: list[tuple[float, str]] = []
    tried = 0

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data: st.DataObject) -> None:
        nonlocal tried
        case = data.draw(cases(ws))
        tried += 1
        t = time.time()
        o = run_inprocess(case.argv)
        dt = time.time() - t
        slowest.append((dt, case.describe()))
        codes[str(o.code)] += 1
        per_verb.setdefault(case.verb, Counter())[str(o.code)] += 1
        problems = check(case, o)
        if problems:
            failures.append({"argv": case.argv, "problems": problems, "exit": o.code,
                             "stderr_tail": (o.escaped or o.stderr)[-1500:]})
            print(f"fuzz: FAILURE {case.describe()}\n  {'; '.join(problems)}\n  "
                  f"{(o.escaped or o.stderr)[-600:]}", file=sys.stderr, flush=True)
        if subprocess_every and tried % subprocess_every == 0:
            # A fresh process must agree with the in-process run (no state carried between inputs).
            shutil.rmtree(case.run_dir, ignore_errors=True) if case.run_dir else None
            if case.out is not None and case.out.exists() and case.verb in ("export", "embed") and o.code == 0:
                shutil.rmtree(case.out) if case.out.is_dir() else case.out.unlink()
            s = run_subprocess(case.argv)
            sub_problems = check(case, s)
            if s.code != o.code or sub_problems:
                mismatches.append({"argv": case.argv, "inprocess": o.code, "subprocess": s.code,
                                   "problems": sub_problems, "stderr_tail": s.stderr[-1000:]})
        if tried % 25 == 0:
            print(f"fuzz: {tried}/{n} inputs, {time.time() - t0:.0f} s, exit codes {dict(codes)}, "
                  f"{len(failures)} failures", file=sys.stderr, flush=True)

    one()
    slowest.sort(reverse=True)
    summary = {"inputs_tried": tried, "seed": seed, "seconds": round(time.time() - t0, 1),
               "setup_seconds": round(setup_s, 1), "exit_codes": dict(sorted(codes.items())),
               "per_verb": {v: dict(sorted(c.items())) for v, c in sorted(per_verb.items())},
               "failures": failures, "subprocess_checked": tried // subprocess_every if subprocess_every else 0,
               "subprocess_mismatches": mismatches,
               "slowest": [{"seconds": round(s, 1), "command": c} for s, c in slowest[:5]]}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="how many generated inputs to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the summary as JSON here")
    parser.add_argument("--subprocess-every", type=int, default=50, help="also run every K-th input as a subprocess")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()
    s = fuzz(args.n, args.seed, args.out, args.subprocess_every, args.keep)
    print(f"inputs tried: {s['inputs_tried']} in {s['seconds']} s (setup {s['setup_seconds']} s)")
    print(f"exit codes: {s['exit_codes']}")
    for verb, c in s["per_verb"].items():
        print(f"  {verb:9s} {c}")
    print(f"subprocess cross-checks: {s['subprocess_checked']}, mismatches: {len(s['subprocess_mismatches'])}")
    print(f"failures: {len(s['failures'])}")
    for f in s["failures"]:
        print(f"- {' '.join(f['argv'])}\n  exit {f['exit']}: {'; '.join(f['problems'])}")
    for m in s["subprocess_mismatches"]:
        print(f"- mismatch: {' '.join(m['argv'])}: in-process {m['inprocess']}, subprocess {m['subprocess']}")
    sys.exit(1 if s["failures"] or s["subprocess_mismatches"] else 0)


if __name__ == "__main__":
    main()
