"""A fast reader for the common extended-XYZ layout, straight into flat arrays.

``ase.io.read`` parses the comment line of every frame character by character
and builds an ``Atoms`` and a calculator per frame: about a minute for QM9's
120,000 molecules. Most training files use one simple layout, which this
module reads in a few seconds by splitting the whole text at once:

    <n_atoms>
    Properties=species:S:1:pos:R:3[:forces:R:3] energy=<float> [Lattice="9 floats"] [pbc="T T T"] [key=value]...
    <symbol> <x> <y> <z> [<fx> <fy> <fz>]            (n_atoms lines, Å and eV/Å)

Extra ``key=value`` pairs become ``info`` entries converted as ASE converts
them (int, float, T/F, plain or quoted text). Anything else (other columns,
array or JSON values, calculator keys other than the energy, a frame that
does not fit) makes :func:`parse` return
None, and the caller falls back to ASE: this reader never guesses. Where it
answers, it gives what ``ase.io.read`` followed by
:func:`ase_mlff.training.data.from_atoms` gives (the tests compare them
exactly), including ASE's cell convention (``Lattice`` rows are cell vectors;
a ``Lattice`` without ``pbc`` is periodic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import all_properties
from ase.data import atomic_numbers

# key=value pairs, values plain or in double quotes (no escapes); a line with anything else falls back
_PAIR = r'([A-Za-z_][A-Za-z0-9_]*)=("[^"\\]*"|[^\s"\'\\{}\[\]=]+)'
_PAIRS = re.compile(_PAIR)
_LINE = re.compile(rf"\s*(?:{_PAIR}(?:\s+{_PAIR})*)?\s*")  # pairs apart by whitespace, as ASE splits them
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class Parsed:
    """Frames of one file as flat arrays, in the file's units (see :mod:`ase_mlff.training.flat`)."""

    numbers: np.ndarray  # [n_atoms] int64
    positions: np.ndarray  # [n_atoms, 3]
    offsets: np.ndarray  # [n_frames + 1]
    cell: np.ndarray  # [n_frames, 3, 3], rows are cell vectors
    pbc: np.ndarray  # [n_frames, 3] bool
    energy: np.ndarray  # [n_frames]
    forces: np.ndarray | None  # [n_atoms, 3] or None
    info: list[dict]


_UNSET = object()
_STR_TO_BOOL = {"T": True, "F": False, "true": True, "false": False, "True": True, "False": False,
                "TRUE": True, "FALSE": False}
_PARTS = re.compile(r"[^\s,]+")


def _value(text: str):
    """A value as ASE's extxyz reader converts it: int, float, bool or string; _UNSET where
    ASE would make something else (arrays, JSON) or this reader is not sure."""
    parts = _PARTS.findall(text)
    if len(parts) != 1:
        # several numbers or flags become arrays; several words stay a string
        if all(_FLOAT.fullmatch(p) or p in _STR_TO_BOOL for p in parts) or not parts:
            return _UNSET
        return text if not text.startswith("_JSON ") else _UNSET
    part = parts[0]
    if part != text:
        return _UNSET  # separators around one value: leave it to ASE
    if _INT.fullmatch(part):
        number = int(part)
        return number if -2**63 <= number < 2**63 else _UNSET
    if _FLOAT.fullmatch(part):
        return float(part)
    try:
        float(part)
        return _UNSET  # nan, inf, 1_0, ...: numbers to numpy, not to this reader
    except ValueError:
        pass
    if part in _STR_TO_BOOL:
        return _STR_TO_BOOL[part]
    return _UNSET if part.startswith("_JSON") else part


def _comment(line: str, energy_key: str, forces_key: str):
    """(has_forces, energy, cell, pbc, info) of one comment line; None where ASE should read it."""
    if not _LINE.fullmatch(line):
        return None
    pairs = dict(_PAIRS.findall(line))
    properties = pairs.pop("Properties", None)
    if properties == "species:S:1:pos:R:3":
        has_forces = False
    elif properties == f"species:S:1:pos:R:3:{forces_key}:R:3":
        has_forces = True
    else:
        return None
    cell, pbc = np.zeros((3, 3)), None
    lattice = pairs.pop("Lattice", None)
    if lattice is not None:
        values = lattice.strip('"').split()
        if len(values) != 9 or not all(_FLOAT.fullmatch(v) for v in values):
            return None
        cell = np.array(values, dtype=np.float64).reshape(3, 3)
        pbc = np.ones(3, dtype=bool)
    if "pbc" in pairs:
        flags = pairs.pop("pbc").strip('"').split()
        if len(flags) != 3 or not all(f in _STR_TO_BOOL for f in flags):
            return None
        pbc = np.array([_STR_TO_BOOL[f] for f in flags])
    if pbc is None:
        pbc = np.zeros(3, dtype=bool)
    info, energy = {}, None
    for key, text in pairs.items():
        text = text[1:-1] if text.startswith('"') else text
        value = text if key.lower() == "uid" else _value(text)  # ASE leaves uid as it is
        if value is _UNSET:
            return None
        if key == "energy":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            energy = value  # ASE gives it to a single-point calculator, which from_atoms prefers
        elif key in all_properties:
            return None  # free_energy, stress, ...: calculator keys this reader does not carry
        else:
            info[key] = value
    if energy is None:
        energy = info.get(energy_key)
    if energy is None or isinstance(energy, (bool, str)):
        return None  # ASE's path gives the message about a missing or unreadable energy
    info.pop(energy_key, None)
    return has_forces, float(energy), cell, pbc, info


def parse(text: str, energy_key: str = "energy", forces_key: str = "forces") -> Parsed | None:
    """Frames of extended-XYZ ``text`` in the layout of the module docstring, or None for other layouts."""
    lines = text.split("\n")
    n_lines = len(lines)
    sizes, energies, cells, pbcs, infos, blocks = [], [], [], [], [], []
    layout = None
    i = 0
    while i < n_lines:
        head = lines[i].strip()
        if not head:
            if any(line.strip() for line in lines[i:]):
                return None  # a blank line between frames: leave it to ASE
            break
        if not head.isdigit():
            return None
        n = int(head)
        if n == 0 or i + 2 + n > n_lines:
            return None
        parsed = _comment(lines[i + 1], energy_key, forces_key)
        if parsed is None:
            return None
        has_forces, energy, cell, pbc, info = parsed
        if layout is None:
            layout = has_forces
        elif layout != has_forces:
            return None  # frames with and without forces: from_atoms' message, through ASE
        sizes.append(n)
        energies.append(energy)
        cells.append(cell)
        pbcs.append(pbc)
        infos.append(info)
        blocks.append((i + 2, i + 2 + n))
        i += 2 + n
    if not sizes:
        return None
    columns = 7 if layout else 4
    tokens = " ".join(" ".join(lines[a:b]) for a, b in blocks).split()
    n_atoms = sum(sizes)
    if len(tokens) != n_atoms * columns:
        return None
    try:
        numbers = np.array([atomic_numbers[s] for s in tokens[0::columns]], dtype=np.int64)
        values = np.array([tokens[c::columns] for c in range(1, columns)], dtype=np.float64).T
    except (KeyError, ValueError):
        return None  # an unknown symbol or a value numpy will not read
    return Parsed(numbers=numbers, positions=np.ascontiguousarray(values[:, :3]),
                  offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                  cell=np.stack(cells), pbc=np.stack(pbcs), energy=np.array(energies, dtype=np.float64),
                  forces=np.ascontiguousarray(values[:, 3:]) if layout else None, info=infos)
