"""The benchmarks' worker harness (scripts/bench_common.py): a healthy worker answers, and a worker that dies, however
it dies, ends the wait within seconds with an error naming its side instead of blocking the parent forever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from bench_common import StdioWorker, Worker, WorkerError  # noqa: E402

# Generous for a loaded 2-core machine; a harness that waits on the pipe alone would block until the test's timeout.
FAST = 10.0


class Side:
    """A side whose methods answer, exit, get killed or raise (built inside the worker process)."""

    def __init__(self, fail_at_start: bool = False) -> None:
        if fail_at_start:
            raise ImportError("No module named 'accelerate'")

    def add(self, a: int, b: int) -> int:
        return a + b

    def pid(self) -> int:
        return os.getpid()

    def exit_hard(self, code: int) -> None:
        os._exit(code)

    def kill_self(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def raise_error(self) -> None:
        raise ValueError("the side broke")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def kill_self_leaving_a_child(self) -> None:
        # A forked child (as DataLoader workers are) keeps the worker's pipes open after the worker is gone.
        if os.fork() == 0:
            time.sleep(2 * FAST)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)


def test_healthy_worker_round_trips():
    with Worker("echo", Side) as w:
        assert w.call("add", 2, 3) == 5
        assert w.call("pid") != os.getpid()  # really another process
        assert w.call("add", "a", "b") == "ab"
    assert w.process.exitcode == 0


@pytest.mark.parametrize(("method", "args", "says"), [
    ("exit_hard", (3,), "exit code 3"),
    ("kill_self", (), "killed by SIGKILL"),
])
def test_dying_worker_fails_fast_naming_the_side(method, args, says):
    w = Worker("ptcli", Side)
    t = time.perf_counter()
    with pytest.raises(WorkerError) as err:
        w.call(method, *args)
    assert time.perf_counter() - t < FAST
    assert "the ptcli worker died" in str(err.value) and says in str(err.value) and method in str(err.value)
    w.close()


def test_worker_killed_from_outside_mid_call():
    w = Worker("hf_bert", Side)
    pid = w.call("pid")
    t = time.perf_counter()
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()  # while the parent waits on the call
    with pytest.raises(WorkerError, match="the hf_bert worker died during sleep.*SIGKILL"):
        w.call("sleep", 60)
    assert time.perf_counter() - t < FAST
    w.close()


def test_exception_in_worker_is_reported_with_its_traceback():
    with pytest.raises(WorkerError, match="the modernbert worker failed in raise_error.*ValueError: the side broke"):
        with Worker("modernbert", Side) as w:
            w.call("raise_error")
    assert not w.process.is_alive()


def test_failure_at_start_names_the_side():
    t = time.perf_counter()
    with pytest.raises(WorkerError, match="the hf_bert worker failed in starting: ImportError: No module named "
                                          "'accelerate'"):
        Worker("hf_bert", Side, True)
    assert time.perf_counter() - t < FAST


def test_benchmark_process_exits_nonzero_when_a_worker_dies():
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from bench_common import Worker, run_main\n"
            "from test_bench_harness import Side\n"
            "def main():\n"
            "    Worker('simclr-peer', Side).call('kill_self')\n"
            "if __name__ == '__main__':\n"
            "    sys.exit(run_main(main))\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(SCRIPTS), str(Path(__file__).parent)], capture_output=True,
                          text=True, timeout=60)
    assert time.perf_counter() - t < FAST + 5
    assert proc.returncode == 1, proc
    assert "error: the simclr-peer worker died during kill_self() (killed by SIGKILL)" in proc.stderr


def stdio_worker(name: str) -> StdioWorker:
    """A worker in another interpreter process, as bench_simclr.py runs its peer side (here: this Python)."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from bench_common import serve_stdio\n"
            "from test_bench_harness import Side\n"
            "serve_stdio(Side)\n")
    return StdioWorker(name, [sys.executable, "-c", code, str(SCRIPTS), str(Path(__file__).parent)])


def test_stdio_worker_round_trips():
    with stdio_worker("peer") as w:
        assert w.call("add", 2, 3) == 5
        assert w.call("pid") == w.process.pid
    assert w.process.returncode == 0


@pytest.mark.parametrize("method", ["kill_self", "kill_self_leaving_a_child"])
def test_dying_stdio_worker_fails_fast(method):
    w = stdio_worker("lightly")
    t = time.perf_counter()
    with pytest.raises(WorkerError, match=f"the lightly worker died during {method}.*killed by SIGKILL"):
        w.call(method)
    assert time.perf_counter() - t < FAST
    w.close()


def test_stdio_worker_error_is_reported():
    with pytest.raises(WorkerError, match="the peer worker failed in raise_error.*ValueError: the side broke"):
        with stdio_worker("peer") as w:
            w.call("raise_error")
