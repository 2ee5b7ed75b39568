"""Run a command's main in a forked child: a process of its own (its exit status, its stdout and
stderr, its signals, its crash cannot touch the test), without paying the second of imports a
fresh `python -m tasks.X` costs, because the parent has imported everything already.

    result = run_main("tasks.pretrain", ["--out", run, "--resume"], env={...})
    result.code, result.stdout, result.stderr

The child starts as `python -m tasks.X` would: stdin from /dev/null, stdout and stderr to files
of its own (block-buffered, UTF-8), the environment it is given, Python's own signal handlers, the
engine's debug checks off (tests/conftest.py turns them on in the parent). What it returns, or
the SystemExit it raises, is its exit status; an exception that escapes is printed as Python
prints it (a traceback) with status 1, so that a test sees exactly what a user would.

Only fork from a parent that has not yet run a task itself (a task's module state, its signal
handlers, its BLAS threads must not be inherited): build fixtures in children too.
"""
from __future__ import annotations

import importlib
import io
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable


@dataclass
class Result:
    code: int            # the exit status, or -N when signal N ended the child
    stdout: str
    stderr: str
    seconds: float


def _child(module: str, argv: list[str], env: dict[str, str] | None, cwd: str | None,
           out_fd: int, err_fd: int, before: Callable[[], None] | None) -> None:
    """The forked child: set up as a fresh interpreter would be, run main, never return."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=False)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        from minigrad.autograd import set_debug
        set_debug(False)
        if before is not None:
            before()
        sys.argv = [module, *argv]
        main = importlib.import_module(module).main
        code = main(argv)
        code = 0 if code is None else code
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # what Python would print for an uncaught exception
        traceback.print_exc()
        code = 130 if isinstance(sys.exc_info()[1], KeyboardInterrupt) else 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


class Child:
    """A forked main still running: `wait()` for its Result, `kill(sig)` to signal it."""

    def __init__(self, module: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
                 before: Callable[[], None] | None = None):
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        for f in (sys.stdout, sys.stderr):  # nothing buffered in the parent is written twice
            f.flush()
        self.t0 = time.perf_counter()
        self.pid = os.fork()
        if self.pid == 0:
            _child(module, [str(a) for a in argv], env, cwd, self._out.fileno(), self._err.fileno(), before)
        self.result: Result | None = None

    def poll(self) -> Result | None:
        if self.result is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._finish(status)
        return self.result

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.result is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 120) -> Result:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill(signal.SIGKILL)
                _, status = os.waitpid(self.pid, 0)
                self._finish(status)
                self.result.stderr += f"\n[forkrun: killed after {timeout} s]"
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.result

    def _finish(self, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        texts = []
        for f in (self._out, self._err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", errors="backslashreplace"))
            f.close()
        self.result = Result(code, texts[0], texts[1], time.perf_counter() - self.t0)


def run_main(module: str, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
             timeout: float = 120, before: Callable[[], None] | None = None) -> Result:
    """`python -m MODULE ARGV...` as a forked child of this (already importing) process."""
    return Child(module, argv, env, cwd, before).wait(timeout)
