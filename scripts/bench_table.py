"""Print the README's markdown table for each benchmark result file (the JSON that scripts/bench_*.py write).

    python scripts/bench_table.py scripts/results/bench/*.json

tests/test_bench_results.py renders every file in scripts/results/bench/ the same way and checks that the README
holds exactly that table, so a figure in the README cannot drift from the measured one: paste what this prints.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: list[str], rows: list[list[Any]]) -> str:
    return "\n".join([row(*header), row(*["---"] * len(header)), *(row(*r) for r in rows)])


def rounds_text(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def machine_text(data: dict[str, Any]) -> str:
    """The CPU and its widest matrix unit: ratios between sides move with it (README "Performance")."""
    m = data["machine"]
    flags = set(m.get("flags") or [])
    isa = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    cpu = f"{m.get('cpu') or 'unknown CPU'}{f' ({isa})' if isa else ''}"
    return f"{cpu}, {m['usable_cpus']} CPUs, {m['torch_threads']} threads"


def mlm(data: dict[str, Any]) -> str:
    s = data["settings"]
    rate = data["matmul_rate_gflops"]["used"]
    rounds = len(next(iter(data["sides"].values()))["rounds"])
    tokens = s["rounds"] * s["steps"] * s["batch"] * s["seq"]
    header = [f"MLM, hidden {s['dim']} / {s['layers']} layers / seq {s['seq']} / batch {s['batch']} / vocab "
              f"{s['vocab']}, {s.get('precision', 'fp32')}, {machine_text(data)}, measured matmul rate "
              f"{rate:.0f} GFLOP/s",
              f"tokens/s (median of {rounds} rounds)", "MFU", "HW util", f"val loss after {tokens:,} tokens",
              "peak RSS"]
    rows = [[side["label"], f"{side['median_tokens_per_s']:,.0f}", f"{side['mfu']:.1%}", f"{side['hw_util']:.1%}",
             f"{side['val_loss']:.3f}", f"{side['peak_rss_mb'] / 1024:.2f} GB"] for side in data["sides"].values()]
    for key, ratio in data["ratios"].items():
        rows.append([f"ratio {key}", f"**{ratio['median']:.2f}** (rounds {rounds_text(ratio['per_round'])})",
                     "", "", "", ""])
    return table(header, rows)


def mlm_ttq(data: dict[str, Any]) -> str:
    s = data["settings"]
    header = [f"MLM time to quality, {machine_text(data)}: budget {s['budget']:g} s of training per side, target "
              f"val loss {data['target_val_loss']:.3f} ({data['slowest']}'s at the budget)",
              "lr", "steps", "val loss at budget", "seconds to target", "ptcli's time / side's"]
    mine = data["seconds_to_target"]["ptcli"]
    rows = []
    for name, curve in data["curves"].items():
        reach = data["seconds_to_target"][name]
        lr = s["lr"][name] if isinstance(s["lr"], dict) else s["lr"]  # one for all sides in older results
        rows.append([data["sides"][name]["label"], f"{lr:g}", f"{curve[-1]['step']:,}",
                     f"{data['loss_at_budget'][name]:.3f}",
                     "not reached" if reach is None else f"{reach:.0f}",
                     f"{mine / reach:.2f}" if reach and mine else "-"])
    return table(header, rows)


def side_by_side(data: dict[str, Any], what: str, unit: str, quality: str) -> str:
    """Sides (``ptcli`` first), each with per-round throughput in ``unit`` and a ``quality`` figure; a ratio row for
    ptcli against each other side (``ratios`` when recorded, else from the per-round figures)."""
    sides = data["sides"]
    rounds = len(next(iter(sides.values()))["rounds"])
    header = [f"{what}, {machine_text(data)}", f"{unit} (median of {rounds} rounds)", quality.replace("_", " ")]
    rows = [[side["label"], f"{side['median']:,.0f}", f"{side[quality]:.3f}"] for side in sides.values()]
    names = list(sides)
    for other in names[1:]:
        per_round = [a / b for a, b in zip(sides[names[0]]["rounds"], sides[other]["rounds"], strict=True)]
        rows.append([f"ratio {names[0]}/{other}",
                     f"**{statistics.median(per_round):.2f}** (rounds {rounds_text(per_round)})", ""])
    return table(header, rows)


def finetune(data: dict[str, Any]) -> str:
    s = data["settings"]
    return side_by_side(data, f"Fine-tuning, pydocs {s['label']} ({s['train_examples']} training examples), "
                              f"{s['steps']} steps, batch {s['batch']}, max length {s['max_len']}",
                        "examples/s", "test_accuracy")


def simclr(data: dict[str, Any]) -> str:
    s = data["settings"]
    return side_by_side(data, f"SimCLR, digits {s['image_size']}x{s['image_size']}, convnet, batch {s['batch']}, "
                              f"{s['steps']} steps", "images/s", "knn_accuracy")


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {"mlm": mlm, "mlm_ttq": mlm_ttq, "finetune": finetune,
                                                         "simclr": simclr}


def render(data: dict[str, Any]) -> str:
    kind = data.get("benchmark")
    if kind not in RENDERERS:
        raise ValueError(f"unknown benchmark {kind!r}; known: {', '.join(RENDERERS)}")
    return RENDERERS[kind](data)


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for i, path in enumerate(paths):
        data = json.loads(Path(path).read_text())
        print(("\n" if i else "") + render(data))
        print(f"\n<!-- {Path(path).name}: {data['command']} ({data['date']}, ptcli "
              f"{data['versions']['ptcli_commit'][:12]}) -->")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
