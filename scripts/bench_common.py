"""What the benchmarks in scripts/ share: the facts of the machine and the versions, the fp32 matmul rate that
utilization figures divide by, raw results written as JSON, and a harness that runs each side of a comparison in a
worker process of its own and fails fast when one dies.

Kept free of heavy imports (torch is imported inside the functions that need it) so that a worker process, and the
harness's tests, start in a fraction of a second.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results" / "bench"
# CPU flags that decide which matmul kernels torch can use (oneDNN / MKL pick AVX-512 or AMX when present).
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
             "amx_int8")


# -- facts -----------------------------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """CPU model, the matmul-relevant flags it has, core counts and torch's thread count."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the model from platform, no flags
        pass
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": model, "flags": [f for f in CPU_FLAGS if f in flags], "cpu_count": os.cpu_count(),
            "usable_cpus": usable, "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def ptcli_commit() -> str:
    """The checkout's commit, with ``-dirty`` when tracked files differ from it (what was measured is then not
    exactly that commit)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions(packages: Sequence[str] = ("torch", "transformers")) -> dict[str, Any]:
    import torch

    found = {name: package_version(name) for name in packages}
    return {"python": platform.python_version(), **found, "torch": torch.__version__, "ptcli_commit": ptcli_commit()}


def command_line() -> str:
    """The command as it was typed, relative to the repository root when the script lies in it."""
    script = Path(sys.argv[0]).resolve()
    shown = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join(["python", shown, *sys.argv[1:]])


def result_header(benchmark: str, packages: Sequence[str] = ("torch", "transformers")) -> dict[str, Any]:
    """The fields every result file starts with."""
    return {"benchmark": benchmark, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command_line(),
            "machine": machine_info(), "versions": versions(packages)}


# -- the numerator ---------------------------------------------------------------------------------------------------

def mlm_minimal_forward_flops(dim: int, layers: int, mlp: float, seq: int, vocab: int,
                              mask: float) -> tuple[float, float]:
    """The one definition of MFU's numerator for masked language modeling: the forward FLOPs per token that the loss
    needs, as (weight matmuls, attention scores QK^T + AV). Every block but the last at every position; the last
    block's keys and values at every position, its queries, attention, output projection and MLP only at the masked
    positions (share ``mask``), as the head (dense transform + vocabulary projection). ``mlp``: the MLP's forward
    matmul FLOPs per position (``4 * ffn * dim`` for a two-matrix MLP). Training FLOPs are 3x these (forward +
    backward). scripts/bench_mlm.py and scripts/gpu_check.py both use it."""
    proj, attn = 2 * 4 * dim * dim, 2 * 2 * seq * dim
    head = 2 * dim * dim + 2 * dim * vocab
    kv = 2 * 2 * dim * dim
    return (layers - 1) * (proj + mlp) + kv + mask * (kv + mlp + head), (layers - 1 + mask) * attn


# -- the denominator -------------------------------------------------------------------------------------------------

def matmul_rate_gflops(sizes: Sequence[int] = (512, 1024, 2048), seconds: float = 0.5,
                       repeats: int = 3, dtype: str = "fp32") -> dict[str, Any]:
    """The best matmul rate (``dtype`` fp32 or bf16) this process reaches with its thread count: for each square
    size, ``repeats`` timings of ~``seconds`` each, and the best of all. Called "measured matmul rate", never
    "peak": it is what torch's GEMM reaches here, not the hardware's data-sheet figure."""
    import torch

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    by_size: dict[str, float] = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=torch_dtype), torch.randn(n, n, dtype=torch_dtype)
        t = time.perf_counter()
        a @ b  # warm-up, also sizes the timed loop
        reps = max(2, int(seconds / max(time.perf_counter() - t, 1e-6)))
        best = 0.0
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
        by_size[str(n)] = round(best, 2)
    return {"best": max(by_size.values()), "by_size": by_size, "seconds_per_timing": seconds, "repeats": repeats,
            "dtype": dtype}


# -- results ---------------------------------------------------------------------------------------------------------

def write_json(path: Path | str, data: Any) -> Path:
    """Write ``data`` as JSON atomically (a reader never sees half a file; a crash leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- worker harness --------------------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    """A side's worker process failed: it raised, or it died (killed, crashed, exited)."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _serve(conn: Connection, factory: Callable[..., Any], args: tuple) -> None:
    """Worker process: build the side (``factory(*args)``), then run ``(method, args)`` requests until ``None``.
    An exception is sent back with its traceback (the parent names the side), then the worker exits 1."""
    try:
        side = factory(*args)
        conn.send(("ok", "ready"))
        while (request := conn.recv()) is not None:
            method, call_args = request
            conn.send(("ok", getattr(side, method)(*call_args)))
        close = getattr(side, "close", None)
        if callable(close):
            close()
    except BaseException:  # noqa: BLE001 - every failure must reach the parent, which decides
        try:
            conn.send(("error", traceback.format_exc()))
        except (OSError, ValueError):
            pass
        os._exit(1)


class _ClosingWorker:
    """A worker as a context manager: closed cleanly on success, killed when the block raises."""

    def close(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.kill()


class Worker(_ClosingWorker):
    """One side of a comparison in a process of its own (``spawn``: no state shared with the parent or the other
    side, as for a user running it alone). ``call(method, *args)`` runs ``factory(*args).method(*args)`` there.

    A dead worker is noticed at once: the parent waits on the pipe *and* the process's sentinel, so a worker killed
    by SIGKILL, crashed, or exited mid-call raises ``WorkerError`` naming the side instead of blocking forever."""

    def __init__(self, name: str, factory: Callable[..., Any], *args: Any, start_timeout: float | None = None,
                 wait: bool = True) -> None:
        self.name = name
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, factory, args), name=f"bench-{name}", daemon=True)
        self.process.start()
        child.close()  # else the parent's copy keeps the pipe open and a dead worker never reads as EOF
        if wait:
            self.ready(start_timeout)

    def ready(self, timeout: float | None = None) -> None:
        """Wait until the side is built (``wait=False`` starts several workers at once, before anything is timed)."""
        self._receive("starting", timeout)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._raise_dead(f"{method}()")
        return self._receive(f"{method}()", timeout)

    def _receive(self, what: str, timeout: float | None) -> Any:
        ready = wait([self._conn, self.process.sentinel], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"the {self.name} worker did not answer {what} within {timeout:g} s; stopped it")
        if self._conn in ready:  # (an answer sent just before exiting still counts)
            try:
                status, value = self._conn.recv()
            except (EOFError, OSError):
                self._raise_dead(what)
            if status == "error":
                self.process.join(5)
                lines = value.strip().splitlines()
                raise WorkerError(f"the {self.name} worker failed in {what}: {lines[-1] if lines else '?'}\n"
                                  f"--- traceback in the {self.name} worker ---\n{value.rstrip()}")
            return value
        self._raise_dead(what)

    def _raise_dead(self, what: str) -> None:
        self.process.join(5)
        raise WorkerError(f"the {self.name} worker died during {what} ({_describe_exit(self.process.exitcode)}); "
                          "its own output above, if any, says why")

    def close(self, timeout: float = 30) -> None:
        """Ask the worker to finish; stop it if it does not within ``timeout`` seconds."""
        if self.process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self.process.join(timeout)
        self.kill()
        self._conn.close()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)



class StdioWorker(_ClosingWorker):
    """One side in a process of another interpreter (``command``: e.g. a second venv's python running a script that
    calls ``serve_stdio``), spoken to in JSON lines over its stdin and stdout; arguments and answers are JSON. The
    same ``call`` as ``Worker``, and the same fast failure: the parent waits on the answer *and* on the process's
    exit (a pidfd), so a worker that dies, even one whose DataLoader workers still hold its stdout, fails at once."""

    def __init__(self, name: str, command: Sequence[str], start_timeout: float | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=env, bufsize=1)
        try:
            self._exited: int | None = os.pidfd_open(self.process.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: poll the exit instead
            self._exited = None
        self._receive("starting", start_timeout)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        try:
            self.process.stdin.write(json.dumps({"method": method, "args": args}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._raise_dead(f"{method}()")
        return self._receive(f"{method}()", timeout)

    def _receive(self, what: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        waitables: list[Any] = [self.process.stdout] + ([self._exited] if self._exited is not None else [])
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(waitables, 1.0 if self._exited is None else left)
            if self.process.stdout in ready:
                line = self.process.stdout.readline()
                if not line:
                    self._raise_dead(what)
                answer = json.loads(line)
                if answer["status"] == "error":
                    self.process.wait(5)
                    lines = answer["value"].strip().splitlines()
                    raise WorkerError(f"the {self.name} worker failed in {what}: {lines[-1] if lines else '?'}\n"
                                      f"--- traceback in the {self.name} worker ---\n{answer['value'].rstrip()}")
                return answer["value"]
            if (self._exited is not None and self._exited in ready) or self.process.poll() is not None:
                self._raise_dead(what)
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                raise WorkerError(f"the {self.name} worker did not answer {what} within {timeout:g} s; stopped it")

    def _raise_dead(self, what: str) -> None:
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        raise WorkerError(f"the {self.name} worker died during {what} ({_describe_exit(self.process.returncode)}); "
                          "its own output above, if any, says why")

    def close(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # end of requests
                self.process.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        if self._exited is not None:
            os.close(self._exited)
            self._exited = None



def serve_stdio(factory: Callable[..., Any], *args: Any) -> None:
    """The worker end of ``StdioWorker``: build ``factory(*args)``, then answer JSON-line requests on stdin until it
    closes. The protocol keeps the real stdout; everything printed meanwhile (Python or C) goes to stderr."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(status: str, value: Any) -> None:
        proto.write(json.dumps({"status": status, "value": value}) + "\n")
        proto.flush()

    try:
        side = factory(*args)
        send("ok", "ready")
        for line in sys.stdin:
            request = json.loads(line)
            send("ok", getattr(side, request["method"])(*request["args"]))
        close = getattr(side, "close", None)
        if callable(close):
            close()
    except BaseException:  # noqa: BLE001 - every failure must reach the parent, which decides
        try:
            send("error", traceback.format_exc())
        except OSError:
            pass
        os._exit(1)


def run_main(main: Callable[[], Any]) -> int:
    """Run a benchmark's ``main``; a failed worker becomes one clear message on stderr and exit status 1."""
    try:
        main()
    except WorkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
