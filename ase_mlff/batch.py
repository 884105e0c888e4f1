"""ASE ``Atoms`` (one or many) to tensors and back.

The dtype and device of a calculation are decided here, once, by
:func:`resolve_device` / :func:`resolve_dtype`; everything downstream follows
the tensors it is given (``x.new_zeros(...)``).

Positions and cells stay float64 whatever dtype the network runs in: a
float32 coordinate near 10⁶ Å is only known to 0.06 Å, so differences of
positions must be taken before any rounding to the network's dtype (see
:func:`ase_mlff.forces.compute`, which rounds the edge vectors only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"float64"`` (or a torch dtype) to a torch floating dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(
            f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}"
        ) from None


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dtype]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when it is present, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device {device!r}: {resolved.type} devices are not supported; use 'auto', 'cpu', "
            "'cuda' or 'cuda:N'"
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available "
            "(CPU-only torch or no GPU); use device='cpu' or 'auto'"
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "use cuda:0 .. cuda:N-1"
        )
    return resolved


@dataclass(frozen=True)
class Batch:
    """Many structures as flat tensors.

    Attributes:
        positions: [n_atoms, 3], Å, as given (not wrapped into the cell); float64
            from :func:`atoms_to_batch`.
        numbers: [n_atoms], atomic numbers (int64).
        cell: [n_systems, 3, 3], Å, cell vectors as rows (zeros where absent).
        pbc: [n_systems, 3], bool.
        system: [n_atoms], index of the structure each atom belongs to (int64, sorted).
        n_atoms: [n_systems], atoms per structure (int64).
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    system: torch.Tensor
    n_atoms: torch.Tensor

    @property
    def n_systems(self) -> int:
        return self.cell.shape[0]

    def replace(self, **changes) -> Batch:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update(changes)
        return Batch(**fields)


def atoms_to_batch(
    atoms: Atoms | Sequence[Atoms],
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Batch:
    """Stack one or many ASE ``Atoms`` (mixed sizes and boundary conditions).

    Args:
        dtype: of positions and cell. Keep float64 (the calculator does) unless
            the coordinates are known to be small: the network's own dtype is
            applied later, to the edge vectors (:func:`ase_mlff.forces.compute`).

    Raises:
        ValueError: naming the structure and atom, for a non-finite position or
            cell, a periodic axis without a cell vector, or an empty structure.
    """
    structures = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    if not structures:
        raise ValueError("atoms_to_batch needs at least one Atoms object, got none")
    for k, a in enumerate(structures):
        if not isinstance(a, Atoms):
            raise TypeError(f"structure {k} is a {type(a).__name__}, not ase.Atoms")
        if len(a) == 0:
            raise ValueError(f"structure {k} has no atoms")
        check_positions(a.positions, a.numbers, k)
    n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
    positions = np.concatenate([a.positions for a in structures])
    numbers = np.concatenate([a.numbers for a in structures])
    cell = np.stack([a.cell.array for a in structures])
    pbc = np.stack([a.pbc for a in structures])
    for k, (c, p) in enumerate(zip(cell, pbc)):
        _check_cell(k, c, p)
    device = torch.device(device)
    n_atoms_t = torch.from_numpy(n_atoms).to(device)
    return Batch(
        positions=torch.from_numpy(positions).to(device=device, dtype=dtype),
        numbers=torch.from_numpy(numbers.astype(np.int64)).to(device),
        cell=torch.from_numpy(cell).to(device=device, dtype=dtype),
        pbc=torch.from_numpy(pbc).to(device),
        system=torch.repeat_interleave(
            torch.arange(len(structures), device=device), n_atoms_t
        ),
        n_atoms=n_atoms_t,
    )


def check_positions(positions: np.ndarray, numbers: np.ndarray, index: int = 0) -> None:
    """A non-finite coordinate is an error naming the structure and atom.

    Left alone, a NaN atom drops out of the neighbor list (every comparison
    with NaN is false) and the energy of the rest looks fine.

    Args:
        positions: [n_atoms, 3] Å of one structure. numbers: [n_atoms].
        index: of the structure in its batch, for the message.
    """
    if np.isfinite(positions).all():
        return
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    atom = int(bad[0])
    z = int(numbers[atom])
    symbol = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"
    others = f" (and {len(bad) - 1} more atoms)" if len(bad) > 1 else ""
    raise ValueError(
        f"structure {index}: atom {atom} ({symbol}) has a non-finite "
        f"position {_vector(positions[atom])}{others}; fix the structure (a blown-up run?)"
    )


def _vector(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(x):g}" for x in values) + "]"


def _check_cell(index: int, cell: np.ndarray, pbc: np.ndarray) -> None:
    """Finite cell vectors; periodic directions need vectors that span a non-degenerate cell."""
    for axis in np.flatnonzero(~np.isfinite(cell).all(axis=1)):
        if pbc[axis]:
            fix = "fix the cell (a blown-up NPT run?)"
        else:
            # even an open axis's vector enters the edge vectors (as 0 · cell) of a mixed batch
            fix = (f"it is not used along the open axis {axis} but must still be finite: "
                   f"set it to zero (atoms.cell[{axis}] = 0)")
        raise ValueError(
            f"structure {index}: cell vector {axis} is not finite {_vector(cell[axis])} "
            f"(pbc {pbc.tolist()}); {fix}"
        )
    if not pbc.any():
        return
    periodic = cell[pbc]
    lengths = np.linalg.norm(periodic, axis=1)
    if (lengths < 1e-8).any():
        raise ValueError(
            f"structure {index} is periodic along {np.flatnonzero(pbc).tolist()} "
            f"but has a zero cell vector there (cell lengths {np.linalg.norm(cell, axis=1)}); "
            "set a cell with atoms.set_cell(...) or turn periodicity off with atoms.pbc = False"
        )
    if np.linalg.matrix_rank(periodic, tol=1e-8) < len(periodic):
        raise ValueError(
            f"structure {index} has linearly dependent periodic cell vectors: {cell.tolist()}"
        )
