"""The output-prefix lock: one run per prefix, stale locks of dead runs taken over, races.

Subprocesses load ``ase_mlff/md/lock.py`` by its path (it needs only the
standard library), so that each starts in a fraction of a second instead of
importing torch through the package.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ase_mlff.md import lock as lock_module
from ase_mlff.md.lock import OutputLock, OutputLocked

LOCK_PY = Path(lock_module.__file__)

# a child that takes the lock on argv[1] once argv[2] exists (a start gun for races),
# prints "won" or "lost", and holds a won lock for argv[3] seconds. Every read of
# the lock file is followed by a 50 ms pause, as on a slow network file system:
# it widens the window between finding a lock stale and acting on it from
# microseconds to a time the racers surely overlap in (a takeover that simply
# deletes the stale file and retries lets two or three of the four win then).
CHILD = f"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("lock", {str(LOCK_PY)!r})
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
prefix, gun, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
_read = lock._read
def slow_read(path):
    found = _read(path)
    time.sleep(0.05)
    return found
lock._read = slow_read
while gun != "-" and not os.path.exists(gun):
    time.sleep(0.001)
held = lock.OutputLock(prefix)
try:
    held.acquire()
except lock.OutputLocked as error:
    print("lost", error, flush=True)
    sys.exit(0)
print("won", flush=True)
time.sleep(hold)
held.release()
"""


def child(prefix: Path, gun: str = "-", hold_s: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(prefix), gun, str(hold_s)],
                            stdout=subprocess.PIPE, text=True)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (pid reuse within a test is
    as unlikely as it gets: Linux hands pids out in increasing order)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(path: Path, pid: int, hostname: str | None = None) -> None:
    path.write_text(json.dumps({"pid": pid, "hostname": hostname or socket.gethostname(),
                                "started": "2020-01-01T00:00:00+00:00",
                                "command_line": "mlff-md run old.xyz"}))


def test_acquire_writes_who_holds_it_and_release_removes_it(tmp_path):
    lock = OutputLock(tmp_path / "simulation")
    assert lock.path == tmp_path / "simulation.lock"
    with lock:
        info = json.loads(lock.path.read_text())
        assert info["pid"] == os.getpid() and info["hostname"] == socket.gethostname()
        assert info["command_line"] == " ".join(sys.argv)
        assert info["started"].endswith("+00:00")  # UTC, ISO 8601
    assert not lock.path.exists()
    lock.release()  # idempotent
    # a path that already names the lock file is the lock file (the driver passes one)
    assert OutputLock(tmp_path / "simulation.lock").path == tmp_path / "simulation.lock"
    assert OutputLock(tmp_path / "run.1").path == tmp_path / "run.1.lock"


def test_second_acquire_in_the_same_process_is_refused_with_who_and_what_to_do(tmp_path):
    with OutputLock(tmp_path / "simulation"):
        with pytest.raises(OutputLocked) as refused:
            OutputLock(tmp_path / "simulation").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert f"prefix {tmp_path / 'simulation'};" in message
        assert "choose another --output" in message
        assert f"delete {tmp_path / 'simulation.lock'}" in message
        assert isinstance(refused.value, FileExistsError)
    # released: free again
    with OutputLock(tmp_path / "simulation"):
        pass


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path):
    lock = OutputLock(tmp_path / "simulation")
    lock.acquire()
    lock.path.unlink()  # deleted by hand, then claimed by another run
    write_lock(lock.path, os.getppid())
    lock.release()
    assert json.loads(lock.path.read_text())["pid"] == os.getppid()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "simulation.lock"
    write_lock(path, dead_pid())
    with OutputLock(tmp_path / "simulation"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_of_a_dead_pid_on_another_host_is_not_judged(tmp_path):
    write_lock(tmp_path / "simulation.lock", dead_pid(), hostname="some-other-node")
    with pytest.raises(OutputLocked, match="on some-other-node"):
        OutputLock(tmp_path / "simulation").acquire()


def test_empty_lock_file_is_stale_only_once_old(tmp_path):
    path = tmp_path / "simulation.lock"
    path.write_bytes(b"")  # a writer that died between creating and writing it ... or is writing now
    with pytest.raises(OutputLocked, match="not written yet"):
        OutputLock(tmp_path / "simulation").acquire()
    old = time.time() - 2 * lock_module.UNREADABLE_STALE_AFTER_S
    os.utime(path, (old, old))
    with OutputLock(tmp_path / "simulation"):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_held_by_a_live_process_is_refused(tmp_path):
    holder = child(tmp_path / "simulation", hold_s=60)
    try:
        assert holder.stdout.readline().strip() == "won"
        with pytest.raises(OutputLocked, match=f"pid {holder.pid} on"):
            OutputLock(tmp_path / "simulation").acquire()
    finally:
        holder.kill()
        holder.communicate()
    # killed without releasing: its lock is now stale and taken over
    assert json.loads((tmp_path / "simulation.lock").read_text())["pid"] == holder.pid
    with OutputLock(tmp_path / "simulation"):
        pass


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_four_runs_racing_for_one_prefix_exactly_one_wins(tmp_path, stale):
    if stale:  # all four find the same stale lock and try to take it over at once
        write_lock(tmp_path / "simulation.lock", dead_pid())
    gun = tmp_path / "go"
    racers = [child(tmp_path / "simulation", str(gun), hold_s=3.0) for _ in range(4)]
    time.sleep(1.0)  # let them start and wait at the gun
    gun.touch()
    outcomes = [r.communicate(timeout=60)[0].split()[0] for r in racers]
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"], outcomes
    assert not (tmp_path / "simulation.lock").exists()  # the winner released it
    assert not (tmp_path / "simulation.lock.takeover").exists()
