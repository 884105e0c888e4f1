"""Many structures as flat numpy arrays, read as ``Atoms`` only on demand.

A training set of 120,000 molecules held as 120,000 ``ase.Atoms`` costs about
a kilobyte of Python objects per molecule and seconds to build; the same
frames as five flat arrays cost the numbers themselves:

| array       | shape            | unit / meaning                                  |
|-------------|------------------|-------------------------------------------------|
| ``numbers`` | [n_atoms]        | atomic numbers, int64                           |
| ``positions`` | [n_atoms, 3]   | Å, float64                                      |
| ``offsets`` | [n_frames + 1]   | frame k is atoms ``offsets[k]:offsets[k + 1]``  |
| ``cell``    | [n_frames, 3, 3] | Å, rows are cell vectors (zeros for molecules)  |
| ``pbc``     | [n_frames, 3]    | bool                                            |

:class:`FlatFrames` is a ``Sequence[Atoms]``: ``frames[k]`` builds one
``Atoms`` (a copy), ``frames[a:b]`` a list of them, so code written for lists
of ``Atoms`` keeps working; the hot paths (training batches, composition
counts, hashing) use the arrays. :class:`FlatForces` is the same for
per-atom forces [n_atoms, 3] eV/Å.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms


def atom_index(offsets: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Indices of the atoms of ``frames`` (in that order) in the flat arrays, [sum of their sizes]."""
    frames = np.asarray(frames, dtype=np.int64)
    starts, counts = offsets[frames], offsets[frames + 1] - offsets[frames]
    first = np.cumsum(counts) - counts  # where each frame starts in the result
    return np.repeat(starts - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)


class _Flat(Sequence):
    """What flat per-frame arrays share: ``offsets``, indexing and subsets (frame ``k`` via ``_frame``)."""

    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        """[n_frames] atoms per frame."""
        return np.diff(self.offsets)

    def _frame(self, k: int):
        raise NotImplementedError

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._frame(k) for k in range(len(self))[index]]
        k = int(index)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        return self._frame(k)

    def __add__(self, other):
        return list(self) + list(other)

    def __radd__(self, other):
        return list(other) + list(self)

    def _subset_atoms(self, frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frames as an index array, their atoms' indices, the subset's offsets)."""
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        sizes = self.n_atoms[frames]
        return frames, atom_index(self.offsets, frames), np.concatenate([[0], np.cumsum(sizes)])


class FlatFrames(_Flat):
    """Structures as flat arrays (see the module docstring); an immutable ``Sequence[Atoms]``."""

    def __init__(self, numbers: np.ndarray, positions: np.ndarray, offsets: np.ndarray,
                 cell: np.ndarray, pbc: np.ndarray):
        self.numbers = np.ascontiguousarray(numbers, dtype=np.int64)  # [n_atoms]
        self.positions = np.ascontiguousarray(positions, dtype=np.float64)  # [n_atoms, 3], Å
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)  # [n_frames + 1]
        self.cell = np.ascontiguousarray(cell, dtype=np.float64)  # [n_frames, 3, 3], Å
        self.pbc = np.ascontiguousarray(pbc, dtype=bool)  # [n_frames, 3]
        n = len(self.offsets) - 1
        if (self.offsets[0] != 0 or self.offsets[-1] != len(self.numbers)
                or self.positions.shape != (len(self.numbers), 3) or self.cell.shape != (n, 3, 3)
                or self.pbc.shape != (n, 3) or (np.diff(self.offsets) < 0).any()):
            raise ValueError(f"inconsistent flat frames: {len(self.numbers)} numbers, positions "
                             f"{self.positions.shape}, {n} frames, cell {self.cell.shape}, pbc {self.pbc.shape}")

    @classmethod
    def from_atoms(cls, frames: Sequence[Atoms]) -> FlatFrames:
        if isinstance(frames, FlatFrames):
            return frames
        frames = list(frames)
        sizes = np.array([len(a) for a in frames], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if not frames:
            return cls(np.zeros(0), np.zeros((0, 3)), offsets, np.zeros((0, 3, 3)), np.zeros((0, 3)))
        return cls(np.concatenate([a.numbers for a in frames]), np.concatenate([a.positions for a in frames]),
                   offsets, np.stack([a.cell.array for a in frames]), np.stack([a.pbc for a in frames]))

    @property
    def frame_of_atom(self) -> np.ndarray:
        """[n_atoms] index of the frame each atom belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.n_atoms)

    def numbers_of(self, k: int) -> np.ndarray:
        return self.numbers[self.offsets[k]:self.offsets[k + 1]]

    def positions_of(self, k: int) -> np.ndarray:
        return self.positions[self.offsets[k]:self.offsets[k + 1]]

    def atoms(self, k: int) -> Atoms:
        """Frame ``k`` as a new ``Atoms`` (its arrays are copies)."""
        return Atoms(numbers=self.numbers_of(k).copy(), positions=self.positions_of(k).copy(),
                     cell=self.cell[k].copy(), pbc=self.pbc[k].copy())

    _frame = atoms

    def subset(self, frames: Sequence[int]) -> FlatFrames:
        frames, atoms, offsets = self._subset_atoms(frames)
        return FlatFrames(self.numbers[atoms], self.positions[atoms], offsets, self.cell[frames], self.pbc[frames])

    def scaled(self, factor: float) -> FlatFrames:
        """The same frames with positions and cells × ``factor`` (a length-unit conversion)."""
        return FlatFrames(self.numbers, self.positions * factor, self.offsets, self.cell * factor, self.pbc)


class FlatForces(_Flat):
    """Per-atom forces [n_atoms, 3] eV/Å of :class:`FlatFrames`; ``forces[k]`` is frame k's [n_k, 3] view."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values = np.ascontiguousarray(values, dtype=np.float64)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if self.values.shape != (int(self.offsets[-1]), 3):
            raise ValueError(f"forces of shape {self.values.shape} do not fit {int(self.offsets[-1])} atoms")

    @classmethod
    def from_list(cls, forces: Sequence[np.ndarray], offsets: np.ndarray) -> FlatForces:
        """Per-frame force arrays to one flat array; a frame of the wrong shape is an error naming it."""
        if isinstance(forces, FlatForces):
            return forces
        forces = [np.asarray(f, dtype=np.float64) for f in forces]
        sizes = np.diff(offsets)
        if len(forces) != len(sizes):
            raise ValueError(f"{len(forces)} force arrays for {len(sizes)} frames")
        for k, (f, n) in enumerate(zip(forces, sizes)):
            if f.shape != (n, 3):
                raise ValueError(f"forces of frame {k} have shape {f.shape}, expected ({n}, 3); "
                                 "fix or remove that frame")
        values = np.concatenate(forces) if forces else np.zeros((0, 3))
        return cls(values, offsets)

    def _frame(self, k: int) -> np.ndarray:
        return self.values[self.offsets[k]:self.offsets[k + 1]]

    def subset(self, frames: Sequence[int]) -> FlatForces:
        _, atoms, offsets = self._subset_atoms(frames)
        return FlatForces(self.values[atoms], offsets)
