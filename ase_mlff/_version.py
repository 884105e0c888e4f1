"""The package version. It is written once, in pyproject.toml; this module only reads it."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path


def _version() -> str:
    """The installed distribution's version; from a source tree that is not installed, the
    ``version`` line of its pyproject.toml; "0+unknown" when neither exists."""
    try:
        return metadata.version("ase-mlff")
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1) if found else "0+unknown"


__version__ = _version()
