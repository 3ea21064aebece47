"""Training progress: a rich bar on a terminal, plain periodic lines in logs (CI)."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int, mode: str = "auto", start: int = 0, desc: str = "train") -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.desc = mode, total, desc
        self._bar: Any | None = None
        self._t0 = time.time()
        self._start = start
        if mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._task = self._bar.add_task(desc, total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, **values: float) -> None:
        info = "  ".join(_fmt(k, v) for k, v in values.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif self.mode == "log":
            elapsed = time.time() - self._t0
            done = max(step - self._start, 1)
            eta = elapsed / done * (self.total - step)
            print(f"[{self.desc}] step {step}/{self.total}  {info}  elapsed {elapsed:.0f}s  eta {eta:.0f}s",
                  file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        elif self.mode != "none":
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _fmt(key: str, value: float) -> str:
    if key in ("lr",):
        return f"{key} {value:.2e}"
    if key.endswith("tokens_per_s") or key.endswith("per_s"):
        return f"{key.replace('_per_s', '/s')} {value:,.0f}"
    return f"{key} {value:.4f}"
