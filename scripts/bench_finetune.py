"""Fine-tuning, side by side: ``ptcli finetune`` vs transformers' BertForSequenceClassification + Trainer.

The same task and data: pydocs docstrings labelled by top-level package (data=pydocs data.label=package, 20
classes), 16 labelled examples per class (320 training examples, a seeded stratified draw), the full validation and
test splits. Both start from random weights (no pre-training is needed, and neither side gets a head start), train
the same number of steps with the same batch size, maximum length and hyperparameters, and keep the checkpoint with
the best validation accuracy (evaluated every ``--eval-every`` steps), whose test accuracy is reported.

    ptcli     ``ptcli finetune ...`` run in-process through ptcli's real entry point (``ptcli.cli.main``: Hydra
              config, recipe, Trainer, checkpoints), with its defaults for everything not listed here.
    hf_bert   BertForSequenceClassification (sdpa) + Trainer + DataCollatorWithPadding, fed exactly what the
              ptcli run of the same round used: its tokenizer (trained on the 320 training texts), its label map,
              its subsample of training examples, and its resolved hyperparameters (config.yaml): AdamW (fused
              on both sides) with lr 3e-4 for the encoder and 1e-3 for the head, betas 0.9/0.98, eps 1e-6,
              weight decay 0.01 on matrices only, linear decay after 100 warm-up steps, clipping 1.0.
    hf_bert_grouped   the same with ``train_sampling_strategy="group_by_length"`` (transformers 5's name for the
              older ``group_by_length=True``): the Trainer batches texts of similar length, so
              little padding is computed (the Trainer's own answer to padding; it also makes batches less random).
    hf_bert_bf16      the same with ``bf16=True`` (CPU autocast; AMX on this machine) and eager attention: torch's
              CPU sdpa kernel is slower in bf16 than in fp32, eager is the Trainer's fastest bf16 setting here.
    (``--hf-sides`` picks among the three. scripts/bench_kernels.py, a bare training step on random batches of
    these texts: fp32 sdpa 188 ms, fp32 eager 218, bf16 sdpa 235, bf16 eager 121; length-sorted fp32 sdpa 30.)

ptcli runs padded batches unpadded (ptcli/models/transformer.py ``Unpadded``): projections, norms and MLP at real
tokens only, attention grouped by row length. It keeps random batches (the same sampling as without it), at its
default precision, fp32 (bf16 would be 70 vs 75 ms a bare step: bench_kernels.py).

Same size: hidden 128, 4 layers, 4 heads, MLP 512, max length 128 (ptcli's default transformer), dropout 0 in the
encoder, 0.1 before the classifier (ptcli's head dropout). Differences that remain, by design of each library's
default: ptcli is pre-LN without biases, rotary positions, and classifies the mean over real tokens with one linear
layer; BERT is post-LN with biases, learned positions, token types and an embedding LayerNorm, and classifies the
[CLS] token through its pooler (dense + tanh) and a linear layer.

Each round is a new fine-tuning run with seed ``--seed + round`` (subsample, initialization, batch order) on each
side, each side in a fresh worker process; the ptcli run goes first in a round, since the HF side reads its data.
Examples/s counts training steps only: the time between consecutive step starts, less the ``--warmup`` first steps
and the gaps that hold an evaluation and its checkpoint. Result JSON: scripts/results/bench/finetune.json
(``--out``); ``scripts/bench_table.py`` renders the README's table from it.

    python scripts/bench_finetune.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ptcli from this checkout (also in the workers)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import RESULTS, Worker, result_header, run_main, write_json  # noqa: E402


def training_seconds(starts: list[float], warmup: int, eval_every: int) -> tuple[float, int]:
    """(seconds, steps) of training: gaps between consecutive step starts, without the first ``warmup`` and
    without the gaps after a step that ends in an evaluation (step numbers that are multiples of ``eval_every``)."""
    gaps = [(i + 1, b - a) for i, (a, b) in enumerate(zip(starts, starts[1:], strict=False))]
    kept = [g for step, g in gaps if step > warmup and step % eval_every]
    return sum(kept), len(kept)


class PtcliSide:
    """``ptcli finetune`` in this (worker) process through the real CLI entry point."""

    def __init__(self, overrides: list[str]) -> None:
        import ptcli.cli  # noqa: F401 - imported before the clock starts, as a user's process has it
        from ptcli.trainer import Trainer

        self.overrides = overrides
        self.starts: list[float] = []
        fit, starts = Trainer.fit, self.starts

        # Wraps (not replaces) the recipe's step function: the real loop runs, each step's start is stamped.
        def timed_fit(trainer, batches, step_fn, eval_fn):
            def timed_step(batch):
                starts.append(time.perf_counter())
                return step_fn(batch)

            return fit(trainer, batches, timed_step, eval_fn)

        Trainer.fit = timed_fit

    def run(self, seed: int, run_dir: str) -> dict[str, Any]:
        from ptcli import cli

        sys.argv = ["ptcli", "finetune", *self.overrides, f"seed={seed}", f"hydra.run.dir={run_dir}"]
        try:
            cli.main()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise RuntimeError(f"ptcli finetune exited {exc.code}: {' '.join(sys.argv)}") from None
        metrics = json.loads((Path(run_dir) / "run.json").read_text())["metrics"]
        return {"starts": self.starts, "test_accuracy": metrics["test/accuracy"],
                "best_val_accuracy": metrics["best/val/accuracy"]}


class HFBertSide:
    """BertForSequenceClassification + transformers' Trainer on what a ptcli run directory says."""

    def __init__(self) -> None:
        # The Trainer needs accelerate: importing it here makes a missing one fail the worker at start.
        import transformers  # noqa: F401
        from transformers import Trainer  # noqa: F401

    def run(self, seed: int, ptcli_run: str, out_dir: str, eval_every: int, variant: str) -> dict[str, Any]:
        import datasets
        import numpy as np
        import torch
        from omegaconf import OmegaConf
        from tokenizers import Tokenizer
        from transformers import (
            BertConfig,
            BertForSequenceClassification,
            DataCollatorWithPadding,
            PreTrainedTokenizerFast,
            PrinterCallback,
            Trainer,
            TrainerCallback,
            TrainingArguments,
        )

        from ptcli.data.sources import Pydocs

        run = Path(ptcli_run)
        cfg = OmegaConf.load(run / "config.yaml")
        names = json.loads((run / "labels.json").read_text())["names"]
        keep = json.loads((run / "subsample.json").read_text())["train_indices"]
        ids = {name: i for i, name in enumerate(names)}
        raw = Tokenizer.from_file(str(run / "tokenizer" / "tokenizer.json"))
        tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        max_len = int(cfg.model.max_len)
        splits = Pydocs(label=cfg.data.label, num_labels=cfg.data.num_labels).load()
        data, same_ids = {}, True
        for split in ("train", "validation", "test"):
            ds = splits[split].filter(lambda b: [v is not None for v in b["label"]], batched=True)
            if split == "train":
                ds = ds.select(keep)
            texts = list(ds["text"])
            enc = tok(texts, truncation=True, max_length=max_len)
            # ptcli's own encoding ([CLS] + text truncated + [SEP]): the two sides must see the same ids
            mine = [[raw.token_to_id("[CLS]"), *e.ids[: max_len - 2], raw.token_to_id("[SEP]")]
                    for e in raw.encode_batch(texts, add_special_tokens=False)]
            same_ids &= enc["input_ids"] == mine
            data[split] = datasets.Dataset.from_dict({"input_ids": enc["input_ids"],
                                                      "attention_mask": enc["attention_mask"],
                                                      "labels": [ids[v] for v in list(ds["label"])]})
        m, o, s, t = cfg.model, cfg.optim, cfg.schedule, cfg.trainer
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=len(tok), hidden_size=m.dim, num_hidden_layers=m.layers,
                            num_attention_heads=m.heads, intermediate_size=m.ffn_dim, max_position_embeddings=max_len,
                            hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout,
                            classifier_dropout=0.1, num_labels=len(names), pad_token_id=tok.pad_token_id)
        extra = HF_VARIANTS[variant]
        model = BertForSequenceClassification._from_config(config, attn_implementation=extra["attn"])
        head = {id(p) for p in model.classifier.parameters()}
        groups: dict[tuple[bool, bool], list] = {}
        for p in model.parameters():
            groups.setdefault((id(p) in head, p.ndim >= 2), []).append(p)
        opt = torch.optim.AdamW([{"params": ps, "lr": o.head_lr if is_head else o.lr,
                                  "weight_decay": o.weight_decay if decays else 0.0}
                                 for (is_head, decays), ps in groups.items()],
                                lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=True)
        starts: list[float] = []

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                starts.append(time.perf_counter())

        def accuracy(pred) -> dict[str, float]:
            return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

        args = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=64,
            max_steps=t.max_steps, lr_scheduler_type=s.decay, warmup_steps=s.warmup_steps, max_grad_norm=t.clip_grad,
            eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=eval_every,
            save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="accuracy",
            greater_is_better=True, logging_steps=t.log_every, report_to=[], use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True, seed=seed, data_seed=seed, bf16=extra["bf16"],
            train_sampling_strategy="group_by_length" if extra["group_by_length"] else "random")
        trainer = Trainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                          data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy,
                          optimizers=(opt, None), callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # (with tqdm off it prints every log and evaluation dict)
        trainer.train()
        test = trainer.predict(data["test"]).metrics
        return {"starts": starts, "test_accuracy": test["test_accuracy"],
                "best_val_accuracy": trainer.state.best_metric, "same_token_ids": same_ids,
                "train_examples": len(data["train"]), "test_examples": len(data["test"])}


# The HF sides: TrainingArguments / attention settings beyond the shared ones.
HF_VARIANTS: dict[str, dict[str, Any]] = {
    "hf_bert": {"attn": "sdpa", "group_by_length": False, "bf16": False},
    "hf_bert_grouped": {"attn": "sdpa", "group_by_length": True, "bf16": False},
    "hf_bert_bf16": {"attn": "eager", "group_by_length": False, "bf16": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="fine-tuning runs per side, alternating")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (ptcli's fine-tuning default)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--labels-per-class", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3, help="steps not timed at the start of each run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hf-sides", default=",".join(HF_VARIANTS),
                    help=f"comma-separated HF Trainer sides (default: all of {', '.join(HF_VARIANTS)})")
    ap.add_argument("--out", type=Path, default=RESULTS / "finetune.json")
    args = ap.parse_args()
    hf_sides = [name.strip() for name in args.hf_sides.split(",") if name.strip()]
    if not hf_sides or set(hf_sides) - set(HF_VARIANTS):
        ap.error(f"--hf-sides {args.hf_sides}: choose among {', '.join(HF_VARIANTS)}")
    if args.steps <= args.warmup + 1:
        raise SystemExit(f"--steps {args.steps} leaves no timed step after --warmup {args.warmup}")
    import transformers

    header = result_header("finetune")
    overrides = ["data=pydocs", "data.label=package", f"data.labels_per_class={args.labels_per_class}",
                 f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch}", f"model.max_len={args.max_len}",
                 f"trainer.eval_every={args.eval_every}", "trainer.patience=null", "trainer.progress=none"]
    hf = f"transformers {transformers.__version__} `BertForSequenceClassification`"
    labels = {"ptcli": "`ptcli finetune` (transformer, random init)",
              "hf_bert": f"{hf} (sdpa) + `Trainer`",
              "hf_bert_grouped": f"{hf} (sdpa) + `Trainer`, length-grouped batches",
              "hf_bert_bf16": f"{hf} (eager) + `Trainer`, bf16"}
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in ["ptcli", *hf_sides]}
    tmp = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    for r in range(args.rounds):
        seed = args.seed + r
        run_dir = tmp / f"ptcli-{r}"
        with Worker("ptcli", PtcliSide, overrides) as w:
            out = w.call("run", seed, str(run_dir))
        results = {"ptcli": out}
        for name in hf_sides:
            with Worker(name, HFBertSide) as w:
                results[name] = w.call("run", seed, str(run_dir), str(tmp / f"{name}-{r}"), args.eval_every, name)
        for name, res in results.items():
            seconds, steps = training_seconds(res["starts"], args.warmup, args.eval_every)
            res.update({"examples_per_s": args.batch * steps / seconds, "timed_steps": steps,
                        "steps": len(res.pop("starts"))})
            per_round[name].append(res)
            print(f"round {r + 1} {name:>15}: {res['examples_per_s']:7,.1f} examples/s  test accuracy "
                  f"{res['test_accuracy']:.3f}  ({res['steps']} steps)", flush=True)
        if not all(results[name]["same_token_ids"] for name in hf_sides):
            print("warning: the HF tokenizer call gave other token ids than ptcli's encoding", file=sys.stderr)
    cfg = (tmp / "ptcli-0" / "config.yaml").read_text()
    shutil.rmtree(tmp, ignore_errors=True)
    sides = {}
    for name, rounds in per_round.items():
        eps = [r["examples_per_s"] for r in rounds]
        sides[name] = {"label": labels[name], "rounds": eps, "median": statistics.median(eps),
                       "test_accuracy": statistics.fmean(r["test_accuracy"] for r in rounds), "per_round": rounds}
    ratios = {}
    for name in hf_sides:
        per = [a / b for a, b in zip(sides["ptcli"]["rounds"], sides[name]["rounds"], strict=True)]
        ratios[f"ptcli/{name}"] = {"per_round": per, "median": statistics.median(per)}
    first_hf = per_round[hf_sides[0]][0]
    result = {**header, "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "label": "package",
                                     "train_examples": first_hf["train_examples"],
                                     "test_examples": first_hf["test_examples"], "hf_variants":
                                     {name: HF_VARIANTS[name] for name in hf_sides},
                                     "ptcli_overrides": overrides, "ptcli_config_round_1": cfg},
              "sides": sides, "ratios": ratios}
    print()
    print(f"{'':>15} {'examples/s median':>18} {'test accuracy (mean)':>21}")
    for name, side in sides.items():
        print(f"{name:>15} {side['median']:>18,.1f} {side['test_accuracy']:>21.3f}")
    for key, ratio in ratios.items():
        print(f"ratio {key} per round: {', '.join(f'{x:.2f}' for x in ratio['per_round'])}; median "
              f"{ratio['median']:.2f}")
    write_json(args.out, result)
    print(f"raw results: {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(main))
