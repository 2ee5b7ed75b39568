"""How a command's main runs: `main_guard` turns expected failures into one line and an exit
status, and `pause_point` marks the moments where the misuse tests interrupt a task."""
from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import minigrad as mg
import minigrad.distributed as dist

from .errors import Terminated, failure


def pause_point(name: str) -> None:
    """A named moment of a task where the misuse tests interrupt it (tests/test_misuse.py).

    Inert unless MINIGRAD_TEST_PAUSE_AT is NAME or NAME#K: then, the first (K-th) time NAME is
    reached, the file MINIGRAD_TEST_PAUSE_FILE is created and the process waits (at most 60 s)
    until the test has sent its signal and deleted that file."""
    at = os.environ.get("MINIGRAD_TEST_PAUSE_AT")
    if at is None or at.partition("#")[0] != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != int(at.partition("#")[2] or 1):
        return
    marker = Path(os.environ["MINIGRAD_TEST_PAUSE_FILE"])
    marker.touch()
    deadline = time.monotonic() + 60
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


_passes: dict[str, int] = {}


def _report(e: Exception) -> int:
    """The exit status of an exception that reached main, after saying it in one line; a bug
    (no status) is raised again, so that its traceback shows."""
    code, message = failure(e)
    if code is None:
        if dist.world_size() > 1:  # a bug on one rank: show it, then end the whole job
            import traceback
            traceback.print_exc()
            dist.abort("failed with the traceback above")
        raise e
    if os.environ.get("MINIGRAD_TRACEBACK"):
        raise e  # a developer wants the traceback
    if dist.world_size() > 1 and not getattr(e, "on_every_rank", False):
        dist.abort(message, code)  # the other ranks would wait forever in their next collective
    if dist.rank() == 0:   # every rank has it: one says it
        print(f"error: {message}", file=sys.stderr)
    return code


def main_guard(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Run a task's main: expected failures become one `error: ...` line on stderr and an exit
    status: 2 for a usage error (UsageError; argparse's own are 2 as well), 1 for a failure (a
    missing or corrupt file, a full or read-only disk, an unreachable server, ...), 130 for
    Ctrl-C and 143 for SIGTERM (the training loop saves a checkpoint first; see
    tasks.training.trainer). MINIGRAD_TRACEBACK=1 shows the full traceback instead of the one line."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        def on_sigterm(signum, frame):
            raise Terminated
        try:
            old_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            old_sigterm = None
        try:
            mg.backend.tune_allocator()  # glibc and NumPy tuned for a training step (see its docstring)
            dist.init()  # joins the MPI job under mpiexec; nothing otherwise
            return fn(argv)
        except KeyboardInterrupt as e:  # Terminated too
            if os.environ.get("MINIGRAD_TRACEBACK"):
                raise
            signame = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
            print(f"error: interrupted ({signame}); what was complete is kept", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        except Exception as e:
            return _report(e)
        finally:
            if old_sigterm is not None:
                signal.signal(signal.SIGTERM, old_sigterm)
    return wrapper
