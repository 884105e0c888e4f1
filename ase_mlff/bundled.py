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


def bundled_files() -> dict[str, Path]:
    """name -> path of every bundled potential (loadable by name), sorted by name."""
    folder = potentials_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob(f"*{MODEL_SUFFIX}"))}


def bundled_potentials() -> dict[str, Path]:
    """name -> path of the bundled potentials that automatic selection may pick, sorted by name.

    Every bundled file except energy-only models (``forces_trained`` false in their
    metadata, :func:`ase_mlff.compositions.energy_only`): their forces were never
    trained, so no MD should run on one unless the user names it (``-m``). Those
    stay loadable by name (:func:`bundled_files`, :func:`resolve_model_path`). A
    file whose record cannot be read stays listed: selection reports it.
    """
    from .compositions import energy_only
    from .io import read_model_record

    selectable = {}
    for name, path in bundled_files().items():
        try:
            metadata = read_model_record(path).get("metadata")
        except (ValueError, OSError):
            metadata = None
        if not energy_only(metadata):
            selectable[name] = path
    return selectable


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A path that exists, or the name of a bundled potential, to a path."""
    path = Path(model)
    if path.exists():
        return path
    bundled = bundled_files()
    if str(model) in bundled:
        return bundled[str(model)]
    names = ", ".join(bundled) or "none installed"
    raise FileNotFoundError(
        f"model file {model} does not exist and is not the name of a bundled potential "
        f"(bundled: {names})"
    )
