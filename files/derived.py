"""A file the cache builds from a downloaded archive (a member of a zip, a conversion of a tar's
CSVs), checked against its size and sha256 before it is kept under its name.

    derive_from_archive(path, url, archive_rel, build, sha256=..., size=..., name=..., how=..., put=...)

downloads the archive into the cache (hub.ensure_file), lets `build(archive, tmp)` write the file
at a temporary name, verifies it and renames it into place; the archive is then deleted, since
everything needed from it is in the cache. An archive that turns out to be of no use (`build`
raised ArchiveError, or the result has the wrong digest) is deleted as well, so that the next run
downloads it afresh, and nothing is left at `path`: the bad digest is rolled back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from . import hub


class ArchiveError(ValueError):
    """An archive that is of no use: not a zip or tar, without the member wanted, unreadable rows."""


def derive_from_archive(path: Path, url: str, archive_rel: str, build: Callable[[Path, Path], None], *,
                        sha256: str | None, size: int | None, name: str, how: str, put: str,
                        progress: bool = True) -> Path:
    """`path`, built by build(archive, tmp) from the archive at `url` (cached at `archive_rel`).

    The messages say `name` ("dataset 'sms-spam'"), `how` it is made from the archive
    ("extracted") and what a user without the network can `put` at `path` instead ("the file
    'SMSSpamCollection' from that zip")."""
    try:
        archive = hub.ensure_file(archive_rel, url, progress=progress)
    except hub.MissingFileError as err:
        raise hub.MissingFileError(
            f"{name} is missing and its archive could not be downloaded from {url} ({err.reason}). Put {put} "
            f"at exactly {path}, or the archive itself at {err.path}.", url=url, path=path,
            reason=err.reason) from err
    tmp = path.with_name(path.name + ".tmp")
    try:
        build(archive, tmp)
        hub.verify_file(tmp, sha256, size)
    except (ArchiveError, hub.ChecksumError) as err:
        tmp.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)  # of no use: the next run downloads it afresh
        if isinstance(err, hub.ChecksumError):
            raise hub.ChecksumError(
                f"{name} {how} from {url} is not the expected file: {err.details}. The archive was deleted and nothing "
                f"was saved at {path}.", err.expected, err.actual, path, err.details) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    archive.unlink(missing_ok=True)  # everything we need from it is now in the cache
    return path
