"""The ways a task fails on purpose, and the exit status and one line each one becomes."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import minigrad as mg
import minigrad.distributed as dist
from files import hub
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


# the folders and files this command writes, with how to go on after a failure there (note_output)
_OUTPUTS: list[tuple[Path, str]] = []


def note_output(path: str | os.PathLike, how_to_continue: str) -> None:
    """Say that this command writes under `path`, and how to go on after a failure there
    ("continue with --out R --resume", "run the same command again"): a failed file operation
    is then explained by what it was writing (describe_os_error)."""
    _OUTPUTS.append((Path(path).absolute(), how_to_continue))


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def describe_os_error(e: OSError) -> str:
    """One line for a failed file operation: what went wrong, where, and what helps, for what
    this command was writing there (its --out, the data cache, something else)."""
    where = f": {e.filename}" if e.filename else ""
    path = Path(e.filename).absolute() if e.filename else None
    out = next((o for o in reversed(_OUTPUTS) if path is not None and _under(path, o[0])), None)
    in_cache = path is not None and _under(path, hub.cache_dir().absolute())
    if e.errno == errno.ENOSPC:
        hint = f"; free some space, then {out[1]}" if out else "; free some space and try again"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "read-only" if e.errno == errno.EROFS else "not writable (permissions)"
        hint = (f"; the data cache {hub.cache_dir()} is {what}: point MINIGRAD_DATA_DIR at a writable folder"
                if in_cache and not out else
                f"; choose an --out on a writable file system" if out and e.errno == errno.EROFS else
                f"; check the permissions, or choose another --out" if out else "")
    elif e.errno == errno.ENOTDIR:
        hint = "; a file stands where a folder is needed"
    else:
        hint = ""
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
    if isinstance(e, MemoryError):  # an allocation the estimate let through (common.memory)
        return EXIT_FAILURE, (f"out of memory{f' ({e})' if str(e) else ''}: the machine could not give an "
                              "allocation; lower the batch size, the context or the model's size")
    if type(e).__module__.startswith("safetensors") or "SafetensorError" in type(e).__name__:
        return EXIT_FAILURE, f"cannot read the weights: {e}"
    return None, ""
