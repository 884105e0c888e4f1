"""ASE ``Atoms`` (one or many) to tensors and back.

The dtype and device of a calculation are decided here, once, by
:func:`resolve_device` / :func:`resolve_dtype`; everything downstream follows
the tensors it is given (``x.new_zeros(...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

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
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available "
            "(CPU-only torch or no GPU); use device='cpu' or 'auto'"
        )
    return resolved


@dataclass(frozen=True)
class Batch:
    """Many structures as flat tensors.

    Attributes:
        positions: [n_atoms, 3], Å, as given (not wrapped into the cell).
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

    def replace(self, **changes) -> "Batch":
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update(changes)
        return Batch(**fields)


def atoms_to_batch(
    atoms: Atoms | Sequence[Atoms],
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Batch:
    """Stack one or many ASE ``Atoms`` (mixed sizes and boundary conditions)."""
    structures = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    if not structures:
        raise ValueError("atoms_to_batch needs at least one Atoms object, got none")
    for k, a in enumerate(structures):
        if not isinstance(a, Atoms):
            raise TypeError(f"structure {k} is a {type(a).__name__}, not ase.Atoms")
        if len(a) == 0:
            raise ValueError(f"structure {k} has no atoms")
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


def _check_cell(index: int, cell: np.ndarray, pbc: np.ndarray) -> None:
    """Periodic directions need cell vectors that span a non-degenerate cell."""
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
