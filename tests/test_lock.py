"""The cycle lock: one holder at a time, a clear refusal, and freed by the kernel when the holder dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.lock import CycleLock, LockHeld, exclusive
from core.errors import StropError

REPO_ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from distill.lock import CycleLock
with CycleLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def start_holder(lock_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    path = tmp_path / "cycle.lock"
    with CycleLock(path) as lock:
        assert lock.held
        with pytest.raises(LockHeld) as refused:
            CycleLock(path).acquire()
    assert isinstance(refused.value, StropError)
    assert refused.value.pid == os.getpid()
    assert refused.value.started_at
    assert f"pid {os.getpid()}" in str(refused.value) and str(path) in str(refused.value)
    assert not lock.held
    assert path.read_bytes() == b""  # released: no stale holder record
    with CycleLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_held_by_another_process_names_it(tmp_path: Path) -> None:
    path = tmp_path / "cycle.lock"
    holder = start_holder(path)
    try:
        with pytest.raises(LockHeld) as refused:
            with CycleLock(path):
                pytest.fail("acquired a lock another process holds")
        assert refused.value.pid == holder.pid
        assert f"kill {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_of_the_holder_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "cycle.lock"
    holder = start_holder(path)
    with pytest.raises(LockHeld):
        CycleLock(path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert json.loads(path.read_text())["pid"] == holder.pid  # the dead holder's record is still there ...
    with CycleLock(path) as lock:  # ... and does not block the next run
        assert lock.held
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_for_repo_lives_under_strop_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    with CycleLock.for_repo("proj-0123abcd") as lock:
        assert lock.path == tmp_path / "home" / "locks" / "proj-0123abcd.lock"
        with pytest.raises(LockHeld):
            CycleLock.for_repo("proj-0123abcd").acquire()
        with CycleLock.for_repo("other-0123abcd"):
            pass


def test_exclusive_blocks_until_the_holder_leaves(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    waiter = """
import sys
from pathlib import Path
from distill.lock import exclusive
print("waiting", flush=True)
with exclusive(Path(sys.argv[1])):
    print("acquired", flush=True)
"""
    with exclusive(path):
        proc = subprocess.Popen([sys.executable, "-c", waiter, str(path)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.5)
        assert proc.poll() is None  # blocked on us
    assert proc.stdout.readline().strip() == "acquired"
    assert proc.wait(timeout=30) == 0
