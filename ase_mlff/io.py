"""Model files: one self-describing file per trained potential.

The file is a ``torch.save`` of plain data only (dicts, lists, strings,
numbers and tensors), so it loads with ``torch.load(weights_only=True)``: no
pickled classes, no code from the file is ever run. Layout::

    format            "ase-mlff-model"
    format_version    int (FORMAT_VERSION when written)
    architecture      name in ase_mlff.models.ARCHITECTURES
    hyperparameters   constructor arguments
    state_dict        weights and buffers (CPU tensors)
    species, cutoff   elements covered, Å
    units             {"energy": "eV", "length": "Å"}
    energy_reference  {element: eV}, plus scale and shift
    dtype             dtype the weights were trained in
    package_version   ase-mlff version that wrote the file
    metadata          free-form training metadata (JSON-compatible)
"""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import torch

from ._version import __version__
from .batch import dtype_name
from .models import ARCHITECTURES, Potential, get_architecture
from .units import energy_factor, length_factor

FORMAT = "ase-mlff-model"
FORMAT_VERSION = 1
from .files import atomic_write


def save_model(model: Potential, path: str | os.PathLike, metadata: dict | None = None,
               overwrite: bool = True) -> Path:
    """Write ``model`` to ``path`` atomically (a crash never leaves half a file).

    Args:
        metadata: free-form JSON-compatible training metadata; merged over any
            ``model.metadata`` already attached.
        overwrite: refuse to replace an existing file when False.
    """
    if not isinstance(model, Potential):
        raise TypeError(f"save_model needs an ase_mlff Potential, got {type(model).__name__}")
    if ARCHITECTURES.get(model.architecture) is not type(model):
        raise ValueError(
            f"cannot save a {type(model).__name__}: its architecture name {model.architecture!r} "
            f"is not in ase_mlff.models.ARCHITECTURES ({sorted(ARCHITECTURES)}), so the file could "
            "not be loaded again; add the class to ARCHITECTURES first"
        )
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or pass overwrite=True")
    merged = dict(getattr(model, "metadata", {}) or {})
    merged.update(metadata or {})
    try:
        json.dumps(merged)
    except TypeError as error:
        raise ValueError(f"metadata must be JSON-compatible: {error}") from None
    parameter = next(model.parameters(), None)
    weights_dtype = parameter.dtype if parameter is not None else model.scale.dtype
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "hyperparameters": _plain(model.hyperparameters()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "species": list(model.species),
        "cutoff": model.cutoff,
        "units": {"energy": "eV", "length": "Å"},
        "energy_reference": {
            "element_energy": model.energy_reference(),
            "scale": float(model.scale),
            "shift": float(model.shift),
        },
        "dtype": dtype_name(weights_dtype),
        "package_version": __version__,
        "metadata": merged,
    }
    return atomic_write(path, lambda tmp: torch.save(record, tmp))


def _plain(value):
    """Numpy scalars (e.g. n_features from np.arange) to Python numbers, recursively.

    weights_only loading accepts plain Python data only; a numpy scalar in the
    record would make a file that save_model wrote unreadable by load_model.
    """
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


def read_model_record(path: str | os.PathLike) -> dict:
    """The raw dictionary of a model file, validated but not turned into a module."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a model file")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for non-torch or unsafe files
        raise ValueError(
            f"{path} is not an ase-mlff model file (torch.load with weights_only=True failed: "
            f"{_first_line(error)}); model files are written by ase_mlff.save_model "
            "or 'mlff-md train'"
        ) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a torch file but not an ase-mlff model file (no '{FORMAT}' header); "
            "model files are written by ase_mlff.save_model or 'mlff-md train'"
        )
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has model format version {version}, written by ase-mlff "
            f"{record.get('package_version', '?')}; this ase-mlff ({__version__}) reads up to "
            f"version {FORMAT_VERSION}: upgrade ase-mlff (pip install -U ase-mlff)"
        )
    return record


def _first_line(error: Exception) -> str:
    """First line of an exception message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return (text.splitlines() or [type(error).__name__])[0][:200]


def model_from_record(record: dict, source: str = "<record>") -> Potential:
    cls = get_architecture(record["architecture"])
    model = cls(**record["hyperparameters"])
    units = record.get("units", {})
    if units.get("energy", "eV") != "eV" or length_factor(units.get("length", "Å")) != 1.0:
        raise ValueError(f"{source}: models in {units} are not supported; convert to eV and Å")
    energy_factor(units.get("energy", "eV"))
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{source}: weights do not match the architecture: {error}") from None
    model.to(getattr(torch, record.get("dtype", "float32")))
    model.metadata = copy.deepcopy(record.get("metadata", {}))
    model.source = source
    return model


def load_model(path: str | os.PathLike) -> Potential:
    """Load a model file (or the name of a bundled potential) on the CPU, in eval mode."""
    from .bundled import resolve_model_path

    path = resolve_model_path(path)
    model = model_from_record(read_model_record(path), str(path))
    return model.eval()
