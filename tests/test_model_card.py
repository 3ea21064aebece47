"""`ptcli export --format hf` writes a README.md model card: hub front matter, the run's own figures (steps,
tokens seen, final metrics, config), the head-start table of `ptcli headstart` when the run has one (a garbled
one is skipped with a note), and a "How to use" snippet that runs on the exported directory."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from conftest import read_manifest, require

transformers = require("transformers", "the `hf` extra is not installed")

HEADSTART = {
    "pretrained": "RUN", "data": "pydocs", "metric": "test/accuracy", "budgets": [1, 4, None], "seeds": [0, 1, 2],
    "rows": [
        {"labels_per_class": 1, "pretrained": {"mean": 0.41, "std": 0.02, "n": 3},
         "random": {"mean": 0.2, "std": 0.03, "n": 3}, "head_start": 0.21, "label_multiplier": 8.3,
         "multiplier_note": "random init needs 8.3x the labels"},
        {"labels_per_class": 4, "pretrained": {"mean": 0.5, "std": 0.01, "n": 3},
         "random": {"mean": 0.3, "std": 0.02, "n": 3}, "head_start": 0.2, "label_multiplier": None,
         "multiplier_note": "more than the largest budget"},
        {"labels_per_class": None, "pretrained": {"mean": 0.62, "std": 0.015, "n": 3},
         "random": {"mean": 0.55, "std": 0.01, "n": 3}, "head_start": 0.07, "label_multiplier": None,
         "multiplier_note": None},
    ],
    "sweep_dir": "multirun/headstart/x", "created_at": "2026-01-01T00:00:00+00:00", "elapsed_s": 12.5,
}


def card(out) -> tuple[dict, str]:
    text = (out / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, text[:300]
    return yaml.safe_load(match.group(1)), text


def run_snippet(text: str) -> None:
    """The card's python block, as a reader would paste it (it names the exported directory)."""
    [code] = re.findall(r"```python\n(.*?)```", text, re.S)
    exec(compile(code, "<model card>", "exec"), {})


def test_pretrain_card_has_the_runs_figures_and_loads(ptcli, smoke_pretrain, tmp_path):
    out = tmp_path / "my-model"
    r = ptcli("export", str(smoke_pretrain), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    front, text = card(out)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "fill-mask"
    assert {"ptcli", "esm"} <= set(front["tags"])
    assert text.count("\n# my-model\n") == 1 and "EsmForMaskedLM" in text
    m = read_manifest(smoke_pretrain)
    cfg = yaml.safe_load((smoke_pretrain / "config.yaml").read_text())
    t = cfg["trainer"]
    tokens = m["step"] * t["batch_size"] * t["grad_accum"] * cfg["data"]["block_size"]
    assert f"{m['step']} optimizer steps of {t['batch_size'] * t['grad_accum']} sequences of " \
           f"{cfg['data']['block_size']} tokens: **{tokens:,} tokens seen**" in text
    assert "masked language modeling: 30% of the tokens" in text and "`Pydocs`" in text
    for key, value in m["metrics"].items():
        assert f"| `{key}` | {value:.4g} |" in text
    assert (smoke_pretrain / "config.yaml").read_text().rstrip() in text  # the run's config, verbatim
    assert "## Head start" not in text  # this run has no headstart.json
    # Still a transformers directory; the card's own snippet runs against it.
    assert type(transformers.AutoModelForMaskedLM.from_pretrained(out)).__name__ == "EsmForMaskedLM"
    run_snippet(text)


def test_headstart_table_in_the_card_and_a_garbled_file_skipped(ptcli, smoke_pretrain, tmp_path):
    run = tmp_path / "pretrain"
    shutil.copytree(smoke_pretrain, run)  # the shared run stays as it is
    (run / "headstart.json").write_text(json.dumps(HEADSTART))
    out = tmp_path / "hf"
    r = ptcli("export", str(run), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    _, text = card(out)
    assert "## Head start" in text and "`data=pydocs`" in text and "`test/accuracy`" in text
    assert "| 1 | 0.410 ± 0.020 (n=3) | 0.200 ± 0.030 (n=3) | +21.0 | random init needs 8.3x the labels |" in text
    assert "| 4 | 0.500 ± 0.010 (n=3) | 0.300 ± 0.020 (n=3) | +20.0 | more than the largest budget |" in text
    assert "| all | 0.620 ± 0.015 (n=3) | 0.550 ± 0.010 (n=3) | +7.0 |  |" in text

    for garbled in ("{not json", json.dumps({"rows": [{"labels_per_class": 1}]}), json.dumps({"rows": []})):
        (run / "headstart.json").write_text(garbled)
        r = ptcli("export", str(run), "--format", "hf", "--out", str(out), "--force")
        assert r.code == 0, r
        _, text = card(out)
        assert "## Head start" in text and "could not be read" in text and "| labels per class |" not in text
    assert transformers.AutoModelForMaskedLM.from_pretrained(out) is not None


@pytest.mark.slow  # ~2 s of training runs: the inner loop keeps the smaller ones
def test_finetune_card_has_both_stages_and_loads(ptcli, smoke_pretrain, tmp_path):
    pre = tmp_path / "pretrain"
    shutil.copytree(smoke_pretrain, pre)
    (pre / "headstart.json").write_text(json.dumps(HEADSTART))  # measured for the encoder it starts from
    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={pre}", "pooling=cls", "debug=smoke", "data.labels_per_class=4",
              "trainer.max_steps=4", "trainer.eval_every=2", f"hydra.run.dir={ft}")
    assert r.code == 0, r
    out = tmp_path / "classifier"
    r = ptcli("export", str(ft), "--format", "hf", "--out", str(out))
    assert r.code == 0, r
    front, text = card(out)
    assert front["pipeline_tag"] == "text-classification" and "base_model" not in front  # a local run: no hub id
    m = read_manifest(ft)
    t = yaml.safe_load((ft / "config.yaml").read_text())["trainer"]
    assert f"{m['step']} optimizer steps of {t['batch_size'] * t['grad_accum']} examples" in text
    assert "- labels: 4 per class" in text
    assert f"{m['data']['train_examples']} training" in text
    for key in ("test/accuracy", "test/macro_f1", "val/accuracy"):
        assert f"| `{key}` | {m['metrics'][key]:.4g} |" in text
    # The pre-training section is the pre-trained run's; its head-start table comes along.
    pre_m = read_manifest(pre)
    assert f"The ptcli run `{pre}`:" in text and f"{pre_m['step']} optimizer steps of" in text
    assert "| 1 | 0.410 ± 0.020 (n=3) |" in text
    labels = json.loads((ft / "labels.json").read_text())["names"]
    assert f"`{labels[0]}`" in text
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert type(model).__name__ == "EsmForSequenceClassification"
    run_snippet(text)


def test_front_matter_names_hub_sources_only(tmp_path):
    from ptcli.export import _hub_id

    assert _hub_id("hf:bert-base-uncased") == "bert-base-uncased"
    assert _hub_id("hf:google/bert_uncased_L-2_H-128_A-2") == "google/bert_uncased_L-2_H-128_A-2"
    # Local checkpoints and ptcli runs are no hub ids: the hub would link them to whatever model has that name.
    for local in (f"hf:{tmp_path}", "hf:./model", "hf:~/model", str(tmp_path), None, "hf:"):
        assert _hub_id(local) is None, local
