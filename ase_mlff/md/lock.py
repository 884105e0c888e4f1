"""An exclusive lock on an MD output prefix, held for the whole run.

HDF5's own file locking is often off where long runs live (NFS, Lustre,
``HDF5_USE_FILE_LOCKING=FALSE``), and it only covers the ``.h5`` file while
it is open, not the ``.traj``/``.log`` files next to it. So a run claims the
prefix with a lock file ``<prefix>.lock``:

* creation is atomic (``O_CREAT | O_EXCL``, atomic on local file systems and
  on NFSv3+ and Lustre), so of any number of runs started at once exactly
  one creates it;
* it holds JSON ``{pid, hostname, started, command_line}`` so that a refused
  run can say who holds the prefix;
* the owner also holds an ``fcntl.flock`` on it where the file system offers
  one: released by the kernel when the process dies, it tells a live owner
  from a reused pid (or one in another pid namespace) on a local disk;
* a lock is *stale*, and is taken over, when its owner ran on this host and
  that pid no longer exists (and no one holds its flock), or when it is empty
  or unreadable and older than :data:`UNREADABLE_STALE_AFTER_S` (its writer
  died between creating and writing it). A lock from another host is never
  judged: its pid means nothing here.

Taking over is race-safe: the stale file is removed only under a second
``O_EXCL`` file, ``<prefix>.lock.takeover``, after checking that the lock is
still the very file (inode and content) found stale; then the ordinary
``O_EXCL`` creation decides, again, which one run gets the prefix.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

try:  # not on Windows
    import fcntl
except ImportError:  # pragma: no cover - depends on the platform
    fcntl = None

#: an empty or unreadable lock file younger than this (s) is being written by its owner
UNREADABLE_STALE_AFTER_S = 5.0
#: how often (s) and how many times a run waits for another run's takeover to finish
_TAKEOVER_WAIT_S = 0.02
_ATTEMPTS = 200


class OutputLocked(FileExistsError):
    """Another run holds the output prefix."""


class OutputLock:
    """Exclusive claim of an MD output prefix (a context manager).

    Args:
        prefix_path: the output prefix (``simulation`` for simulation.h5/.traj/.log):
            the lock file is ``simulation.lock``. A path already ending in
            ``.lock`` is taken as the lock file itself.
    """

    def __init__(self, prefix_path: str | os.PathLike):
        path = Path(prefix_path)
        self.path = path if path.suffix == ".lock" else path.with_name(path.name + ".lock")
        self.prefix = self.path.with_name(self.path.name[: -len(".lock")])
        self._fd: int | None = None
        self._content: bytes | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Create the lock file, taking over a stale one.

        Raises:
            OutputLocked: another live run holds the prefix (or this object does already).
        """
        if self._fd is not None:
            raise OutputLocked(f"this run already holds {self.path}")
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pass
            else:
                self._claim(fd)
                return
            found = _read(self.path)
            if found is None:  # gone between the two calls: try again
                continue
            if not _is_stale(self.path, found):
                raise OutputLocked(self._message(found))
            self._take_over(found)
        raise OutputLocked(f"could not claim {self.path} after {_ATTEMPTS} attempts (other runs keep "
                           f"taking it over); wait for them or choose another --output")

    def release(self) -> None:
        """Remove the lock file if it is still ours (not replaced by hand); idempotent."""
        if self._fd is None:
            return
        fd, content = self._fd, self._content
        self._fd = self._content = None
        try:
            found = _read(self.path)
            if found is not None and found.inode == _inode(os.fstat(fd)) and found.content == content:
                os.unlink(self.path)
        finally:
            os.close(fd)  # also drops the flock

    # -- internals ---------------------------------------------------------------
    def _claim(self, fd: int) -> None:
        """Our freshly created file: flock it, then say who we are."""
        try:
            _flock(fd, exclusive=True)
            content = json.dumps({
                "pid": os.getpid(),
                "hostname": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command_line": " ".join(sys.argv),
            }).encode()
            os.write(fd, content)
            os.fsync(fd)  # other hosts read it through the server
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        self._fd, self._content = fd, content

    def _take_over(self, stale: _Found) -> None:
        """Remove the stale lock file, unless someone else is already doing so or has done so."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            age = _age_s(guard)
            if age is not None and age > UNREADABLE_STALE_AFTER_S:
                raise OutputLocked(
                    f"a takeover of the stale lock {self.path} was interrupted {age:.0f} s ago; "
                    f"if no other run is starting with prefix {self.prefix}, delete {guard} and "
                    f"{self.path}") from None
            time.sleep(_TAKEOVER_WAIT_S)  # another run is removing it: then compete for O_EXCL
            return
        try:
            # under the guard no one else removes the lock, and no one can create
            # one while it exists: so it is still the stale file iff inode and
            # content are unchanged, and removing it then is safe
            now = _read(self.path)
            if now is not None and now.inode == stale.inode and now.content == stale.content:
                os.unlink(self.path)
        finally:
            os.close(fd)
            os.unlink(guard)

    def _message(self, found: _Found) -> str:
        info = found.info
        if info is None:
            who = "its lock file was created just now and is not written yet"
        else:
            who = (f"pid {info.get('pid')} on {info.get('hostname')}, started {info.get('started')}, "
                   f"`{info.get('command_line')}`")
        return (f"another run ({who}) is writing outputs with prefix {self.prefix}; wait for it to "
                f"finish or choose another --output (if that process is gone, delete {self.path})")


class _Found:
    """A lock file as read: identity (device, inode), raw content, parsed JSON or None."""

    def __init__(self, inode: tuple[int, int], content: bytes, mtime: float):
        self.inode, self.content, self.mtime = inode, content, mtime
        try:
            info = json.loads(content.decode())
        except (UnicodeDecodeError, ValueError):
            info = None
        self.info = info if isinstance(info, dict) and _valid_pid(info.get("pid")) else None


def _read(path: Path) -> _Found | None:
    """The lock file's identity and content, or None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return _Found(_inode(stat), b"".join(chunks), stat.st_mtime)
    finally:
        os.close(fd)


def _is_stale(path: Path, found: _Found) -> bool:
    """Whether the owner of the lock is known to be gone (module doc)."""
    if _flock_held(path):
        return False
    if found.info is None:
        return time.time() - found.mtime > UNREADABLE_STALE_AFTER_S
    if found.info.get("hostname") != socket.gethostname():
        return False
    return not _pid_alive(int(found.info["pid"]))


def _valid_pid(pid) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _flock(fd: int, exclusive: bool) -> bool:
    """Non-blocking flock; True if taken, False if someone holds a conflicting one.

    Where the file system has no flock (ENOLCK, EOPNOTSUPP, ...) it counts as
    taken: the O_EXCL file alone is the lock there.
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _flock_held(path: Path) -> bool:
    """Whether a live process holds the flock of ``path`` (False where flock is unavailable)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _flock(fd, exclusive=False)  # shared: readable files suffice
    finally:
        os.close(fd)  # drops the probe's own lock


def _inode(stat: os.stat_result) -> tuple[int, int]:
    return (stat.st_dev, stat.st_ino)


def _age_s(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
