"""ptcli.testing.invoke: the in-process runner that the suite and the fuzzer run the CLI through."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest
import torch
from conftest import read_manifest

from ptcli import cli
from ptcli.testing import invoke


@pytest.mark.slow  # a fine-tuning run (seconds of CPU)
def test_a_stale_handler_writes_to_the_runs_stderr_and_the_process_state_is_put_back(smoke_pretrain, tmp_path):
    # A handler made earlier on a logger Hydra does not reconfigure, whose stream (a capture) is closed since: what
    # made the fuzz test print "--- Logging error ---" with a traceback on a machine without matplotlib's cache.
    stale = io.StringIO()
    handler = logging.StreamHandler(stale)
    lib = logging.getLogger("ptcli")
    lib.addHandler(handler)
    stale.close()
    env, cwd, threads, root = dict(os.environ), os.getcwd(), torch.get_num_threads(), logging.getLogger()
    handlers, level, argv = list(root.handlers), root.level, sys.argv
    try:
        r = invoke(["finetune", f"pretrained={smoke_pretrain}", "debug=smoke", "trainer.num_threads=1",
                    f"hydra.run.dir={tmp_path / 'ft'}"], cwd=tmp_path)
    finally:
        lib.removeHandler(handler)
    assert r.code == 0, r
    assert "Logging error" not in r.stderr and "trainable parameters" in r.stderr, r  # recipes/finetune.py logs it
    assert read_manifest(tmp_path / "ft")["status"] == "completed"
    assert handler.stream is stale  # given back as it was
    assert dict(os.environ) == env and os.getcwd() == cwd and sys.argv == argv
    assert torch.get_num_threads() == threads  # the run set 1
    assert root.handlers == handlers and root.level == level  # Hydra's job-log handlers are gone again


def test_an_escaping_exception_is_raised_or_recorded(monkeypatch, tmp_path):
    def broken() -> None:
        print("partial output")
        raise RuntimeError("a bug past the CLI's error handling")

    monkeypatch.setattr(cli, "main", broken)
    with pytest.raises(RuntimeError, match="a bug past"):
        invoke(["report", str(tmp_path)])
    r = invoke(["report", str(tmp_path)], catch=True)
    assert r.code is None and r.stdout == "partial output\n"
    assert r.escaped is not None and "RuntimeError: a bug past the CLI's error handling" in r.escaped
    assert "Traceback (most recent call last)" in r.escaped


def test_exit_codes_and_a_replaced_environment(tmp_path):
    r = invoke(["report", str(tmp_path / "missing")], env={**os.environ, "PTCLI_TEST_MARKER": "1"})
    assert r.code == 2 and "ptcli: error:" in r.stderr and "missing" in r.stderr, r
    assert "PTCLI_TEST_MARKER" not in os.environ
    assert invoke(["--version"]).code == 0
