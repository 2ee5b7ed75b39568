"""tests/forkrun.py reports what a fresh `python -m` would: exit status, output, tracebacks,
signals; the fuzz tests' verdicts rest on it."""
from __future__ import annotations

import os
import signal
import sys
import time
import types

import pytest

from forkrun import Child, run_main

# a stand-in command module, importable by name in the forked child
demo = types.ModuleType("forkrun_demo")


def _main(argv):
    print("out:", os.environ.get("DEMO", "-"), os.getcwd())
    print("err: é", file=sys.stderr)
    if argv[0] == "raise":
        raise RuntimeError("boom")
    if argv[0] == "exit":
        sys.exit(int(argv[1]))
    if argv[0] == "sleep":
        time.sleep(60)
    if argv[0] == "signal":
        return int(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    return int(argv[0])


demo.main = _main
sys.modules["forkrun_demo"] = demo


@pytest.mark.parametrize("argv,code", [(["0"], 0), (["3"], 3), (["exit", "2"], 2)])
def test_exit_status_and_output(argv, code, tmp_path):
    r = run_main("forkrun_demo", argv, env={"DEMO": "x"}, cwd=str(tmp_path))
    assert r.code == code
    assert r.stdout == f"out: x {tmp_path}\n" and r.stderr == "err: é\n"


def test_an_escaping_exception_is_a_traceback_and_status_1():
    r = run_main("forkrun_demo", ["raise"])
    assert r.code == 1 and "Traceback" in r.stderr and "RuntimeError: boom" in r.stderr


def test_signals_start_at_their_defaults_and_kill_is_reported():
    assert run_main("forkrun_demo", ["signal"]).code == 1
    child = Child("forkrun_demo", ["sleep"])
    child.kill(signal.SIGKILL)
    assert child.wait().code == -signal.SIGKILL


def test_a_child_past_its_timeout_is_killed():
    r = run_main("forkrun_demo", ["sleep"], timeout=0.5)
    assert r.code == -signal.SIGKILL and "killed after" in r.stderr
