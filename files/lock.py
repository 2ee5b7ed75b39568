"""One process per folder: an advisory lock (`flock`) that the OS releases when its holder dies.

    with FolderLock(run_dir):        # FolderBusy names the holder's PID when another process has it
        ...                          # the folder is ours until the block ends (or the process dies)

Where the lock lives. The lock is taken on the file `.lock` in the folder. A refused or failed
start must leave the folder byte for byte as it was, so taking the lock never creates or writes
anything: `acquire()` locks `.lock` when the folder has one, and the folder itself (its own
directory entry, which `flock` locks as well as a file) when it has none, as a folder written
before there were locks. `claim()`, called once the task has checked everything and starts to
write, creates `.lock` if needed, locks it too and writes the holder's PID into it. A second
process therefore always meets a lock it cannot take: the folder's while the first one checks,
`.lock` (and the folder, still held) once it writes.

Who holds it. The kernel knows: /proc/locks lists each flock with its holder's PID and the
device and inode of the locked file. The PID written into `.lock` is a fallback for systems
without /proc/locks, and a note for the curious (a stale PID there means nothing: the lock,
not the file, is what counts). An flock is held by an open file description, so a forked child
that keeps the descriptor keeps the lock; ours are opened close-on-exec (Python's default).
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""

    def __init__(self, folder: Path, pid: int | None):
        self.folder, self.pid = folder, pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"{folder} is in use by {who} (it holds {folder / LOCK_NAME}); wait for it to "
                         "finish or stop it, then try again")


def holder_pid(path: str | os.PathLike) -> int | None:
    """The PID holding an flock on `path` (a file or folder), from /proc/locks; None if none is
    found there (no such lock, or no /proc)."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:123456 0 EOF"; a waiter has "->" after the number
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == want:
                return int(fields[4])
        except ValueError:
            continue
    return None


def _written_pid(lock_file: Path) -> int | None:
    try:
        text = lock_file.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


class FolderLock:
    """The lock of one folder, taken without writing (`acquire`), then claimed for writing (`claim`).

    Released by `release()`, by leaving a `with` block, or by the OS when the process ends."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.file = self.folder / LOCK_NAME
        self._dir_fd: int | None = None
        self._file_fd: int | None = None

    @property
    def held(self) -> bool:
        return self._dir_fd is not None or self._file_fd is not None

    def _lock(self, path: Path, flags: int) -> int | None:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o666)  # a new .lock: what the umask gives any file
        try:
            taken = _try_flock(fd)
        except OSError as e:  # a file system that cannot lock a folder (NFS emulates flock with
            os.close(fd)      # POSIX locks, which need a file open for writing): .lock alone then
            if flags & os.O_DIRECTORY and e.errno in (errno.EBADF, errno.ENOLCK, errno.EINVAL):
                return None
            raise
        if not taken:
            os.close(fd)
            self.release()
            raise FolderBusy(self.folder, holder_pid(path) or _written_pid(self.file))
        return fd

    def acquire(self) -> FolderLock:
        """Take the lock without creating or changing anything (the folder must exist).
        FolderBusy when another process holds it."""
        if not self.held:
            self._dir_fd = self._lock(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            if self.file.is_file():
                self._file_fd = self._lock(self.file, os.O_RDWR)
        return self

    def claim(self) -> None:
        """Start writing: create `.lock` if needed, lock it, and write this process's PID into it."""
        self.acquire()
        if self._file_fd is None:  # the folder had no .lock
            self._file_fd = self._lock(self.file, os.O_RDWR | os.O_CREAT)
        os.ftruncate(self._file_fd, 0)
        os.pwrite(self._file_fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release(self) -> None:
        for fd in (self._file_fd, self._dir_fd):
            if fd is not None:
                os.close(fd)  # closing the last descriptor of an flock releases it
        self._dir_fd = self._file_fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_dir_fd", None) is not None or getattr(self, "_file_fd", None) is not None:
            self.release()
