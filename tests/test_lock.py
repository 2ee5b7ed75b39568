"""files/lock.py: one process per folder, the holder named, the lock gone when its holder dies,
and taking it (as opposed to claiming it) writes nothing."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from files.lock import LOCK_NAME, FolderBusy, FolderLock, holder_pid

ROOT = Path(__file__).resolve().parents[1]

# a second process that takes (or claims) the lock, says so, and waits for stdin to close
HOLDER = """
import sys
from files.lock import FolderLock
lock = FolderLock(sys.argv[1])
lock.claim() if sys.argv[2] == "claim" else lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def _holder(folder: Path, how: str = "claim") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), how], cwd=ROOT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "held", proc.communicate()
    return proc


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["acquire", "claim"])
def test_a_second_process_is_refused_naming_the_holder(tmp_path, how):
    proc = _holder(tmp_path, how)
    try:
        with pytest.raises(FolderBusy) as err:
            FolderLock(tmp_path).acquire()
        assert err.value.pid == proc.pid
        assert f"process {proc.pid}" in str(err.value) and str(tmp_path) in str(err.value)
        with pytest.raises(FolderBusy):
            FolderLock(tmp_path).claim()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    FolderLock(tmp_path).acquire().release()  # free again once the holder is gone


def test_the_lock_is_gone_after_sigkill_of_its_holder(tmp_path):
    proc = _holder(tmp_path, "claim")
    assert holder_pid(tmp_path / LOCK_NAME) == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10  # the kernel drops the lock as the process's files close
    while holder_pid(tmp_path) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    lock = FolderLock(tmp_path)
    lock.claim()
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"  # the dead PID replaced
    lock.release()


def test_taking_the_lock_writes_nothing(tmp_path):
    """A start that is refused after taking the lock must leave the folder as it was: acquire()
    creates no .lock where there is none and changes none that is there."""
    (tmp_path / "run.json").write_text("{}")
    before = _digests(tmp_path)
    with FolderLock(tmp_path):
        assert _digests(tmp_path) == before
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text("12345\n")  # a folder that had a holder once
    before = _digests(tmp_path)
    with FolderLock(tmp_path) as lock:
        assert lock.held and _digests(tmp_path) == before
    assert _digests(tmp_path) == before


def test_a_folder_without_lock_file_is_still_locked_while_checked(tmp_path):
    """The lock of a folder that has no .lock yet is the folder's own: a second process is refused
    while the first checks it, and after the first has claimed it (created .lock) too."""
    first = FolderLock(tmp_path).acquire()
    with pytest.raises(FolderBusy) as err:
        FolderLock(tmp_path).acquire()
    assert err.value.pid == os.getpid()
    first.claim()
    assert (tmp_path / LOCK_NAME).is_file()
    with pytest.raises(FolderBusy):
        FolderLock(tmp_path).acquire()
    first.release()
    FolderLock(tmp_path).claim()


def test_holder_pid_is_none_for_an_unlocked_path(tmp_path):
    (tmp_path / "f").write_text("")
    assert holder_pid(tmp_path / "f") is None
    assert holder_pid(tmp_path / "missing") is None


def test_the_lock_file_gets_the_mode_of_any_new_file(tmp_path):
    from files.atomic import umask_mode
    lock = FolderLock(tmp_path)
    lock.claim()
    assert (tmp_path / LOCK_NAME).stat().st_mode & 0o777 == umask_mode()
    lock.release()
