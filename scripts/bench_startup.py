"""Start-up time of the CLI: median wall time of `ptcli --help` and `ptcli --version` over N runs.

    .venv/bin/python scripts/bench_startup.py [N]
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time


def median_wall(cmd: list[str], n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times) - min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    exe = shutil.which("ptcli") or f"{sys.prefix}/bin/ptcli"
    print(f"{'command':<22} {'median s':>9} {'spread s':>9}   (n={n})")
    for args in (["--help"], ["--version"], ["pretrain", "--help"]):
        med, spread = median_wall([exe, *args], n)
        print(f"{'ptcli ' + ' '.join(args):<22} {med:>9.3f} {spread:>9.3f}")
    med, spread = median_wall([sys.executable, "-c", "pass"], n)
    print(f"{'python -c pass':<22} {med:>9.3f} {spread:>9.3f}   (interpreter floor)")


if __name__ == "__main__":
    main()
