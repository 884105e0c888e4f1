"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], private: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic, so readers see the old file or the new one, never a
    partial one; on any error the temporary file is removed. The result gets
    ordinary permissions (as the umask allows) unless ``private``: mkstemp
    creates files readable by their owner only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        if not private:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def existing(paths: Iterable[Path], overwrite: bool, what: str, hint: str) -> list[Path]:
    """The ``paths`` that exist; unless ``overwrite``, a FileExistsError "<what>: a, b, c and 2 more; <hint>"."""
    taken = [p for p in paths if p.exists()]
    if taken and not overwrite:
        shown = ", ".join(map(str, taken[:3])) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise FileExistsError(f"{what}: {shown}; {hint}")
    return taken
