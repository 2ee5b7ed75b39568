"""The ways a task fails on purpose, and the exit status and one line each one becomes."""
from __future__ import annotations

import errno
import json

import minigrad as mg
import minigrad.distributed as dist
from files.hub import ChecksumError, MissingFileError
from gpt2.tokenizer import TokenizerUnavailableError

EXIT_USAGE, EXIT_FAILURE = 2, 1


class TaskError(Exception):
    """An expected way for a task to fail (a missing or corrupt file, a server that cannot be
    reached, ...): printed as one line, exit status 1."""


class UsageError(TaskError):
    """A problem with what the user asked for (a flag out of range, a refused combination, a
    changed flag on --resume): printed as one line, exit status 2, as argparse's own errors."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `docker stop`, `kill`) outside the training loop: exit status 143."""


def describe_os_error(e: OSError) -> str:
    """One line for a failed file operation: what went wrong, where, and what helps."""
    where = f": {e.filename}" if e.filename else ""
    hint = {errno.ENOSPC: "; free some space, then continue with --resume (the last complete checkpoint is intact)",
            errno.EROFS: "; choose an --out on a writable file system",
            errno.EACCES: "; check the permissions, or choose another --out",
            errno.ENOTDIR: "; a file stands where a folder is needed"}.get(e.errno, "")
    return f"{e.strerror or e}{where}{hint}"


def failure(e: Exception) -> tuple[int | None, str]:
    """(exit status, one line) of an expected failure; (None, "") for a bug (shown in full)."""
    if isinstance(e, UsageError):
        return EXIT_USAGE, str(e)
    if isinstance(e, (TaskError, MissingFileError, ChecksumError, FileNotFoundError, IsADirectoryError,
                      mg.BackendError, mg.nn.StateDictError, json.JSONDecodeError, ValueError,
                      TokenizerUnavailableError, dist.DistributedError)):
        return EXIT_FAILURE, str(e)
    if isinstance(e, OSError):  # ENOSPC, EROFS, EACCES, ENOTDIR, ...
        return EXIT_FAILURE, describe_os_error(e)
    if type(e).__module__.startswith("safetensors") or "SafetensorError" in type(e).__name__:
        return EXIT_FAILURE, f"cannot read the weights: {e}"
    return None, ""
