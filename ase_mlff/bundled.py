"""The trained potentials shipped with the package (files under ``potentials/``)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

MODEL_SUFFIX = ".pt"


def potentials_dir() -> Path:
    """Folder holding the bundled ``*.pt`` files (``MLFF_POTENTIALS`` overrides it)."""
    override = os.environ.get("MLFF_POTENTIALS")
    if override:
        return Path(override)
    return Path(str(resources.files("ase_mlff.potentials")))


def bundled_potentials() -> dict[str, Path]:
    """name -> path of every bundled potential, sorted by name."""
    folder = potentials_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob(f"*{MODEL_SUFFIX}"))}


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A path that exists, or the name of a bundled potential, to a path."""
    path = Path(model)
    if path.exists():
        return path
    bundled = bundled_potentials()
    if str(model) in bundled:
        return bundled[str(model)]
    names = ", ".join(bundled) or "none installed"
    raise FileNotFoundError(
        f"model file {model} does not exist and is not the name of a bundled potential "
        f"(bundled: {names})"
    )
