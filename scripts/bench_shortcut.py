"""ConvNet's projection shortcut, two ways: a strided 1x1 conv vs a stride-2 subsample then a 1x1 conv (what
``BasicBlock`` does: the same function, and it avoids oneDNN's channels-last 1x1 stride-2 kernel, whose weight
gradient was wrong on an AVX2-only CPU). The default ConvNet (width 32, 3 stages) forward + backward on 8x8 digits,
batch 512 (SimCLR's two views of 256), alternating rounds; median ms per step.

    python scripts/bench_shortcut.py     # raw output: scripts/results/bench/<machine>/shortcut.txt
"""

import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ptcli from this checkout
from ptcli.models import convnet as cn  # noqa: E402


class StridedShortcutBlock(cn.BasicBlock):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(cin, cout, stride)
        if stride != 1 or cin != cout:
            self.shortcut[0] = torch.nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.stride = 1  # forward then skips the subsample: the conv strides


def build(strided: bool) -> torch.nn.Module:
    block = cn.BasicBlock
    cn.BasicBlock = StridedShortcutBlock if strided else block
    try:
        torch.manual_seed(0)
        return cn.ConvNet()
    finally:
        cn.BasicBlock = block


def main() -> None:
    x = torch.rand(512, 1, 8, 8)
    models = {"strided 1x1": build(True), "subsample + 1x1": build(False)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(7):
        for name in list(models) if r % 2 == 0 else list(models)[::-1]:
            m = models[name]
            for i in range(13):
                if i == 3:
                    t = time.perf_counter()
                m.zero_grad(set_to_none=True)
                m(x).sum().backward()
            times[name].append((time.perf_counter() - t) / 10 * 1000)
    print(f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    for name, ts in times.items():
        print(f"{name:>16}: median {statistics.median(ts):.1f} ms/step, rounds {', '.join(f'{t:.1f}' for t in ts)}")


if __name__ == "__main__":
    main()
