"""Signals from the very start, and the named moments where the tests send them.

`quiet_start(__name__)` is the first thing a command module does, before its heavy imports
(NumPy, the engine, the tokenizer: half a second or more): a Ctrl-C or SIGTERM during them ends
the command with one line and 130 / 143 instead of a KeyboardInterrupt traceback from inside an
import. Nothing has been done by then, so there is nothing to save. `main_guard` takes over once
the command runs. This module imports nothing heavy, so that it is in place within milliseconds.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def _quit_while_starting(signum, frame) -> None:
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    try:
        sys.stderr.write(f"error: interrupted ({name}) while starting; nothing was done\n")
        sys.stderr.flush()
    finally:
        os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)


def quiet_start(module_name: str) -> None:
    """In a command run as `python -m tasks.NAME` (`module_name` "__main__"): Ctrl-C and SIGTERM
    end it with one line until main_guard installs its own handlers."""
    if module_name != "__main__":
        return  # imported as a library (a test, another program): its signals are its own
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _quit_while_starting)
    pause_point("imports")


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


# ----------------------------------------------------------------------------- stopping between batches

class EvaluationStopped(Exception):
    """A stop (Ctrl-C, SIGTERM) asked for during an evaluation: it is left unfinished."""


_stop_asked: list[Callable[[], bool]] = []  # the training loop's, while it runs (interruptible)


@contextlib.contextmanager
def interruptible(asked: Callable[[], bool]) -> Iterator[None]:
    """While inside, every evaluation batch first asks `asked()` whether to stop (the training
    loop's stop flag, agreed among ranks), so a stop waits for one batch, not a whole evaluation."""
    _stop_asked.append(asked)
    try:
        yield
    finally:
        _stop_asked.pop()


def between_batches() -> None:
    """Called between evaluation batches: EvaluationStopped when the training loop was asked to stop."""
    pause_point("evaluation")
    if _stop_asked and _stop_asked[-1]():
        raise EvaluationStopped
