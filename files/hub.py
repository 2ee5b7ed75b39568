"""A small download cache: fetch a file once, verify it, and reuse it.

Files live under `cache_dir()` at a relative path chosen by the caller. A download goes to
`<file>.part` first (so an interrupted one can be resumed with an HTTP Range request) and is
renamed to its final name only after its size and digest check out, so the cache never holds
a half-written or corrupt file under its real name. The digest is a sha256, or a git blob id for
files whose publisher only gives that (a file in a GitHub repository: sha1 of "blob <size>\0" + bytes).

Environment variables:
    MINIGRAD_DATA_DIR   use this folder as the cache instead of `<repo root>/data`
    MINIGRAD_OFFLINE    if set to a non-empty value other than "0", never touch the network
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

__all__ = [
    "ChecksumError",
    "MissingFileError",
    "cache_dir",
    "ensure_file",
    "git_blob_id_of",
    "offline",
    "sha256_of",
    "verify_file",
]

TIMEOUT_S = 30  # per socket operation, not for the whole download
CHUNK_BYTES = 1 << 20
USER_AGENT = "minigrad-hub/0.1 (+urllib)"


class MissingFileError(FileNotFoundError):
    """A cached file is absent and could not be downloaded; the message says where to put it."""

    def __init__(self, message: str, url: str | None = None, path: Path | None = None,
                 reason: str = ""):
        super().__init__(message)
        self.url = url
        self.path = path
        self.reason = reason  # why the download failed, for callers that reword the message


class ChecksumError(ValueError):
    """A file's size or sha256 is not the expected one."""

    def __init__(self, message: str, expected: str | int, actual: str | int, path: Path,
                 details: str = ""):
        super().__init__(message)
        self.details = details or message  # the mismatch alone, without the file name
        self.expected = expected
        self.actual = actual
        self.path = path


def cache_dir() -> Path:
    """The cache folder: $MINIGRAD_DATA_DIR if set, else `data/` next to the minigrad package."""
    env = os.environ.get("MINIGRAD_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks so big files do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id_of(path: str | os.PathLike) -> str:
    """The id git gives the file's content: hex sha1 of b"blob <size>\\0" followed by the bytes."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str | None = None, size: int | None = None,
                git_blob: str | None = None) -> Path:
    """Check a file's size, sha256 and/or git blob id; raise ChecksumError on a mismatch, return
    the path.

    The error's `expected`/`actual` are the digests when one is given, else the sizes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cannot verify {path}: no such file")
    problems = []
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"expected {size} bytes, got {actual_size}")
    expected_digest = actual_digest = None
    if sha256 is not None:
        expected_digest, actual_digest = sha256.lower(), sha256_of(path)
        if actual_digest != expected_digest:
            problems.append(f"expected sha256 {expected_digest}, got {actual_digest}")
    if git_blob is not None:
        expected_blob, actual_blob = git_blob.lower(), git_blob_id_of(path)
        if actual_blob != expected_blob:
            problems.append(f"expected git blob id {expected_blob}, got {actual_blob}")
            if expected_digest is None:
                expected_digest, actual_digest = expected_blob, actual_blob
    if problems:
        if expected_digest is not None:
            expected, actual = expected_digest, actual_digest
        else:
            expected, actual = size, actual_size
        details = "; ".join(problems)
        raise ChecksumError(f"{path} is not the expected file: {details}",
                            expected, actual, path, details)
    return path


def offline() -> bool:
    """True when MINIGRAD_OFFLINE asks never to touch the network."""
    return os.environ.get("MINIGRAD_OFFLINE", "") not in ("", "0")


def _resolve(relpath: str) -> Path:
    """cache_dir()/relpath, refusing paths that would land outside the cache."""
    rel = PurePosixPath(relpath)
    if not relpath or rel.is_absolute() or ".." in rel.parts or Path(relpath).is_absolute():
        raise ValueError(f"cache path must be relative and stay inside the cache, got {relpath!r}")
    return cache_dir().joinpath(*rel.parts)


def _missing(url: str, path: Path, reason: str) -> MissingFileError:
    return MissingFileError(
        f"{path} is missing and could not be downloaded from {url} ({reason}). "
        f"Download it yourself and save it at exactly {path} "
        f"(or set MINIGRAD_DATA_DIR to a folder that already holds it).",
        url=url, path=path, reason=reason)


def _complete_size_from_416(err: urllib.error.HTTPError) -> int | None:
    """A 416 reply may say the full size as 'Content-Range: bytes */N'."""
    value = err.headers.get("Content-Range", "") if err.headers else ""
    if value.startswith("bytes */"):
        try:
            return int(value[len("bytes */"):])
        except ValueError:
            return None
    return None


def _download(url: str, part: Path, dest: Path, size: int | None, progress: bool) -> None:
    """Fill `part` with the whole file at `url`, continuing a previous partial download if any.

    Network trouble becomes MissingFileError (the .part is kept for the next try); disk errors
    propagate as they are.
    """
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # cannot be a prefix of the right file
        part.unlink()
        start = 0
    if size is not None and start == size:
        return  # a previous run got every byte; the caller verifies them

    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            # Our .part is at or past the end the server knows: either complete or stale.
            if _complete_size_from_416(err) == start:
                return
            part.unlink()
            return _download(url, part, dest, size, progress)
        raise _missing(url, dest, f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
        raise _missing(url, dest, str(getattr(err, "reason", err))) from err

    with response:
        _receive(response, url, part, dest, start, size, progress)


def _receive(response: http.client.HTTPResponse, url: str, part: Path, dest: Path, start: int,
             size: int | None, progress: bool) -> None:
    """Write the body of `response` into `part` after its first `start` bytes, with a progress bar.

    A broken or short transfer becomes MissingFileError, the .part kept for the next try.
    """
    # Anything but 206 means the server ignored our Range and sends the file from byte 0.
    if start and getattr(response, "status", None) != 206:
        start = 0
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    total = start + length if length is not None else size
    received = 0
    part.parent.mkdir(parents=True, exist_ok=True)  # only now: no empty folders when offline
    with open(part, "ab" if start else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, file=sys.stderr, disable=not progress, leave=False) as bar:
        try:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                TimeoutError) as err:
            raise _missing(url, dest, f"download interrupted after {start + received} bytes "
                           f"({err}); run again to resume from {part}") from err
    if length is not None and received < length:
        raise _missing(url, dest, f"connection closed after {start + received} of "
                       f"{start + length} bytes; run again to resume from {part}")


def ensure_file(relpath: str, url: str, sha256: str | None = None, size: int | None = None,
                progress: bool = True, git_blob: str | None = None) -> Path:
    """Return cache_dir()/relpath, downloading and verifying it first if it is not there yet.

    A file already in the cache is only checked by size (hashing every time would be slow);
    use `verify_file` for a full check. Raises MissingFileError when the file is absent and
    cannot be downloaded, ChecksumError when the download does not match `size`/`sha256`/`git_blob`.
    """
    dest = _resolve(relpath)
    if dest.is_file():
        if size is not None and dest.stat().st_size != size:
            actual = dest.stat().st_size
            raise ChecksumError(
                f"cached file {dest} has {actual} bytes but {size} are expected; "
                f"delete it and run again to download a fresh copy from {url}",
                size, actual, dest)
        return dest
    if offline():
        raise _missing(url, dest, "offline mode: MINIGRAD_OFFLINE is set")

    part = dest.with_name(dest.name + ".part")
    resumed = part.exists() and part.stat().st_size > 0
    while True:
        _download(url, part, dest, size, progress)
        try:
            verify_file(part, sha256=sha256, size=size, git_blob=git_blob)
        except ChecksumError as err:
            part.unlink(missing_ok=True)
            if resumed:
                # The old .part may have come from a different version of the file:
                # one clean download from byte 0 settles it.
                resumed = False
                continue
            raise ChecksumError(
                f"the file downloaded from {url} is not the expected one: {err.details}. "
                f"The partial download was deleted and nothing was saved at {dest}.",
                err.expected, err.actual, dest, err.details) from None
        break
    os.replace(part, dest)
    return dest
