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
    repulsion         (version 2, only when set) {"kind": "zbl", "pairs": [[A, B, inner Å, outer Å], ...]}:
                      the short-range prior of ase_mlff.models.repulsion

A file without a repulsion is written as version 1, so ase-mlff releases that
predate the prior read it; one with a repulsion is version 2, which those
releases refuse instead of silently dropping the prior.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import re
from numbers import Real
from pathlib import Path

import torch

from ._version import __version__
from .batch import dtype_name
from .files import atomic_write
from .models import ARCHITECTURES, Potential, get_architecture
from .units import length_factor

FORMAT = "ase-mlff-model"
FORMAT_VERSION = 2

#: how to get a good model file, the end of every message about a bad one
MAKE_MODEL = "model files are written by ase_mlff.save_model or 'mlff-md train'"
_DAMAGED = ("the file is damaged or was not written by ase-mlff: re-save the model with "
            "ase_mlff.save_model or retrain it with 'mlff-md train'")
#: the first bytes of every zip archive (torch.save writes zip archives since torch 1.6)
_ZIP_MAGIC = b"PK\x03\x04"


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
    record = model_record(model, metadata)
    return atomic_write(path, lambda tmp: torch.save(record, tmp))


def model_record(model: Potential, metadata: dict | None = None) -> dict:
    """What a model file holds for ``model`` (plain data; ``metadata`` merged over ``model.metadata``)."""
    merged = dict(getattr(model, "metadata", {}) or {})
    merged.update(metadata or {})
    try:
        json.dumps(merged)
    except TypeError as error:
        raise ValueError(f"metadata must be JSON-compatible: {error}") from None
    parameter = next(model.parameters(), None)
    weights_dtype = parameter.dtype if parameter is not None else model.scale.dtype
    repulsion = getattr(model, "repulsion", None)
    record = {
        "format": FORMAT,
        "format_version": 1 if repulsion is None else 2,
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
    if repulsion is not None:
        record["repulsion"] = repulsion.record()
    return record


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


def load_plain(path: str | os.PathLike, what: str, remedy: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``, with one-line errors for files it cannot read.

    torch's own messages are long, speak of internal error codes ("101" for a
    text file) and suggest ``weights_only=False``, which would let the file run
    code: they are replaced by what is wrong and ``remedy``.

    Args:
        what: what the file should be, for messages ("an ase-mlff model file").
        remedy: how to get a good one.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[:len(_ZIP_MAGIC)] != _ZIP_MAGIC:
        found = "it is empty" if not head else f"it starts with {head!r}"
        raise ValueError(f"{path} is not {what}: it is not a torch zip archive ({found}); {remedy}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused a pickled object
        found = re.search(r"GLOBAL (\S+)", str(error))
        name = f" ({found.group(1)})" if found else ""
        raise ValueError(
            f"{path} is not {what}: it holds a pickled Python object{name}, not plain data, and "
            f"such objects are never unpickled here because that can run code from the file; {remedy}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        # the first sentence says what failed; torch's others guess at causes
        reason = re.split(r"(?<=\.)\s+", _first_line(error))[0]
        raise ValueError(
            f"{path} is not {what}: it is a truncated or damaged torch archive ({reason}); {remedy}"
        ) from None
    except Exception as error:  # torch raises many types for damaged files
        raise ValueError(f"{path} is not {what}: torch.load failed ({_first_line(error)}); {remedy}") from None


def _first_line(error: Exception) -> str:
    """First sentence of an exception message, without colour codes or advice to set weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    line = (text.splitlines() or [""])[0]
    sentences = [s for s in re.split(r"(?<=\.)\s+", line) if "weights_only" not in s]
    return (" ".join(sentences).strip() or type(error).__name__)[:200]


def read_model_record(path: str | os.PathLike) -> dict:
    """The raw dictionary of a model file, validated but not turned into a module.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a model file, a newer format, or contents of the wrong
            kind (one line naming the field).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a model file")
    from .spk import is_schnetpack_file, schnetpack_record

    if is_schnetpack_file(path):  # a pickled SchNetPack model: read without running it, converted
        return schnetpack_record(path)
    record = load_plain(path, "an ase-mlff model file", MAKE_MODEL)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(
            f"{path} is a torch file but not an ase-mlff model file (no '{FORMAT}' header); {MAKE_MODEL}"
        )
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has model format version {version}, written by ase-mlff "
            f"{record.get('package_version', '?')}; this ase-mlff ({__version__}) reads up to "
            f"version {FORMAT_VERSION}: upgrade ase-mlff (pip install -U ase-mlff)"
        )
    check_record(record, str(path))
    return record


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_record(record: dict, source: str = "<record>") -> None:
    """Every field a loader or ``mlff-md info`` reads has the right kind (ValueError naming it)."""

    def bad(field: str, expected: str) -> ValueError:
        if field not in record:
            return ValueError(f"{source} lacks the field {field!r} ({expected}); {_DAMAGED}")
        value = record[field]
        shown = repr(value) if len(repr(value)) < 80 else f"a {type(value).__name__}"
        return ValueError(f"{source}: field {field!r} is {shown} ({type(value).__name__}), expected "
                          f"{expected}; {_DAMAGED}")

    architecture = record.get("architecture")
    if not isinstance(architecture, str):
        raise bad("architecture", f"the name of an architecture, one of {sorted(ARCHITECTURES)}")
    try:
        cls = get_architecture(architecture)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    hyperparameters = record.get("hyperparameters")
    if not isinstance(hyperparameters, dict) or not all(isinstance(k, str) for k in hyperparameters):
        raise bad("hyperparameters", f"a dict of {architecture} constructor arguments")
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(hyperparameters) - set(parameters))
    missing = [name for name, p in parameters.items()
               if p.default is inspect.Parameter.empty and name not in hyperparameters
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if unknown or missing:
        problem = f"unknown {unknown}" if unknown else f"missing {missing}"
        raise ValueError(f"{source}: hyperparameters {problem} for architecture {architecture} "
                         f"(it takes {list(parameters)}); {_DAMAGED}")
    state_dict = record.get("state_dict")
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise bad("state_dict", "the weights: a dict of parameter names to tensors")
    species = record.get("species")
    if not isinstance(species, list) or not species or not all(isinstance(s, str) for s in species):
        raise bad("species", "a list of element symbols")
    if not _is_number(record.get("cutoff")):
        raise bad("cutoff", "a number (Å)")
    units = record.get("units", {})
    if not isinstance(units, dict) or not all(isinstance(v, str) for v in units.values()):
        raise bad("units", "a dict like {'energy': 'eV', 'length': 'Å'}")
    if record.get("dtype", "float32") not in ("float32", "float64"):
        raise bad("dtype", "'float32' or 'float64'")
    reference = record.get("energy_reference", {})
    if not isinstance(reference, dict) or not isinstance(reference.get("element_energy", {}), dict) or not all(
            _is_number(v) for v in [*reference.get("element_energy", {}).values(),
                                    reference.get("scale", 1.0), reference.get("shift", 0.0)]):
        raise bad("energy_reference", "{'element_energy': {element: eV}, 'scale': eV, 'shift': eV}")
    if not isinstance(record.get("metadata", {}), dict):
        raise bad("metadata", "a dict")
    if "repulsion" in record:
        repulsion = record["repulsion"]
        pairs = repulsion.get("pairs") if isinstance(repulsion, dict) else None
        if (not isinstance(repulsion, dict) or repulsion.get("kind") != "zbl" or not isinstance(pairs, list)
                or not all(isinstance(p, (list, tuple)) and len(p) == 4 and all(isinstance(e, str) for e in p[:2])
                           and all(_is_number(v) for v in p[2:]) for p in pairs)):
            raise bad("repulsion", "{'kind': 'zbl', 'pairs': [[element, element, inner Å, outer Å], ...]}")


def state_dict_mismatch(module: torch.nn.Module, stored: dict) -> str | None:
    """How ``stored`` weights fail to fit ``module``, in one line (None when they fit).

    ``load_state_dict`` reports this as many lines listing every tensor.
    """
    expected = module.state_dict()
    not_tensors = [k for k, v in stored.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"{len(not_tensors)} entries are not tensors, e.g. {not_tensors[0]!r}"
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = [k for k in expected if k in stored and tuple(stored[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        k = mismatched[0]
        return (f"{len(mismatched)} tensor(s) of another shape, e.g. {k} is {list(stored[k].shape)} "
                f"in the file but {list(expected[k].shape)} for these hyperparameters")
    if missing or unexpected:
        names = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        return f"{names} ({len(missing)} missing, {len(unexpected)} unexpected tensors)"
    return None


def model_from_record(record: dict, source: str = "<record>") -> Potential:
    """Build the module a record describes (the record is checked first: ValueError on bad contents)."""
    check_record(record, source)
    architecture = record["architecture"]
    units = record.get("units", {})
    if units.get("energy", "eV") != "eV" or length_factor(units.get("length", "Å")) != 1.0:
        raise ValueError(f"{source}: models in {units} are not supported; convert to eV and Å")
    try:
        model = get_architecture(architecture)(**record["hyperparameters"])
    except Exception as error:  # a constructor given edited values can raise anything
        raise ValueError(f"{source}: hyperparameters {json.dumps(record['hyperparameters'], default=str)} "
                         f"do not build a {architecture} model ({_first_line(error)}); {_DAMAGED}") from None
    detail = state_dict_mismatch(model, record["state_dict"])
    if detail:
        raise ValueError(f"{source}: weights do not match the architecture: {detail}; {_DAMAGED}")
    stored = record["state_dict"]
    try:
        model.load_state_dict(stored)
    except RuntimeError as error:
        raise ValueError(f"{source}: weights do not match the architecture ({_first_line(error)}); "
                         f"{_DAMAGED}") from None
    if "repulsion" in record:
        try:
            model.set_repulsion({(a, b): (r_in, r_out) for a, b, r_in, r_out in record["repulsion"]["pairs"]})
        except ValueError as error:
            raise ValueError(f"{source}: field 'repulsion': {error}; {_DAMAGED}") from None
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
