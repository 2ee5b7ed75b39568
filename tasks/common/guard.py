"""How a command's main runs: `main_guard` turns expected failures into one line and an exit
status (`pause_point`, the moments where the misuse tests interrupt a task, lives in signals.py)."""
from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Callable

import minigrad as mg
import minigrad.distributed as dist

from .errors import Terminated, failure
from .signals import EXIT_SIGINT, EXIT_SIGTERM

EXIT_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process the closed pipe ended


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


def _streams() -> None:
    """stdout and stderr that never fail a finished run: a name the terminal's encoding cannot
    show is printed escaped, and a closed one (`>&-`) writes nowhere."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
        elif hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


def _quiet_stdout() -> None:
    """The reader of stdout went away (`| head`): what is left to print goes nowhere, and so
    does Python's own flush at exit, instead of a BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        sys.stdout = open(os.devnull, "w", encoding="utf-8")


def main_guard(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Run a task's main: expected failures become one `error: ...` line on stderr and an exit
    status: 2 for a usage error (UsageError; argparse's own are 2 as well), 1 for a failure (a
    missing or corrupt file, a full or read-only disk, an unreachable server, too little memory,
    ...), 130 for Ctrl-C and 143 for SIGTERM (the training loop saves a checkpoint first; see
    tasks.training.trainer), 141 and nothing more when the reader of stdout went away.
    MINIGRAD_TRACEBACK=1 shows the full traceback instead of the one line."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        def on_sigterm(signum, frame):
            raise Terminated
        try:  # (replacing common.signals.quiet_start's, which held them while the command imported)
            old = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_sigterm),
                   signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
        except ValueError:  # not the main thread: leave signals alone
            old = {}
        _streams()
        try:
            mg.backend.tune_allocator()  # glibc and NumPy tuned for a training step (see its docstring)
            dist.init()  # joins the MPI job under mpiexec; nothing otherwise
            return fn(argv)
        except KeyboardInterrupt as e:  # Terminated too
            if os.environ.get("MINIGRAD_TRACEBACK"):
                raise
            signame = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
            print(f"error: interrupted ({signame}); what was complete is kept", file=sys.stderr)
            return EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT
        except BrokenPipeError:
            _quiet_stdout()
            return EXIT_PIPE
        except Exception as e:
            return _report(e)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    return wrapper
