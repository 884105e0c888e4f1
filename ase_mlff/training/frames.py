"""Frames as tensors with their neighbor lists built once, and batches cut from them.

Positions do not move during training, so each frame's neighbor list is built
once (``NeighborList`` on chunks of frames) and stored per frame; a training
batch is then a concatenation with index offsets, with no distance search in
the epoch loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..batch import Batch, atoms_to_batch
from ..forces import compute
from ..neighbors import NeighborList, Neighbors
from .data import Dataset

# frames per neighbor-list call when building the cache: bounded so that the
# dense search's distance blocks stay small
_CHUNK_ATOMS = 2_000


class FrameCache:
    """Per-frame tensors (positions, numbers, cell, pbc, edges, labels) on one device.

    Args:
        data: the frames.
        cutoff: neighbor-list radius in Å (the model's cutoff).
        dtype: floating dtype of positions and cell (the model's dtype).
    """

    def __init__(self, data: Dataset, cutoff: float, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_frames = len(data)
        self.periodic = any(bool(a.pbc.any()) for a in data.atoms)
        neighbor_list = NeighborList(cutoff)
        self.frames: list[tuple[torch.Tensor, ...]] = []
        start = 0
        while start < self.n_frames:
            stop, atoms = start, 0
            while stop < self.n_frames and (stop == start or atoms + len(data.atoms[stop]) <= _CHUNK_ATOMS):
                atoms += len(data.atoms[stop])
                stop += 1
            batch = atoms_to_batch(data.atoms[start:stop], dtype=torch.float64)
            neighbors = neighbor_list(batch)
            first_atom = torch.cumsum(batch.n_atoms, 0) - batch.n_atoms
            edge_system = batch.system[neighbors.edge_index[0]]
            for k in range(stop - start):
                mask = edge_system == k
                edges = neighbors.edge_index[:, mask] - first_atom[k]
                atom_slice = slice(int(first_atom[k]), int(first_atom[k] + batch.n_atoms[k]))
                self.frames.append((
                    batch.positions[atom_slice].to(self.device, dtype),
                    batch.numbers[atom_slice].to(self.device),
                    batch.cell[k].to(self.device, dtype),
                    batch.pbc[k].to(self.device),
                    edges.to(self.device),
                    neighbors.shifts[mask].to(self.device),
                ))
            start = stop
        self.energy = torch.as_tensor(data.energy, dtype=torch.float64, device=self.device)  # [B], eV
        self.forces = None
        if data.forces is not None:
            self.forces = [torch.as_tensor(f, dtype=dtype, device=self.device) for f in data.forces]
        self.n_atoms = torch.as_tensor(data.n_atoms, device=self.device)

    def collate(self, indices: Sequence[int]) -> tuple[Batch, Neighbors, torch.Tensor, torch.Tensor | None]:
        """(batch, neighbors, energy [B] eV, forces [N, 3] eV/Å or None) of the given frames."""
        parts = [self.frames[k] for k in indices]
        n_atoms = self.n_atoms[list(indices)]
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        edge_index = torch.cat([p[4] + offsets[b] for b, p in enumerate(parts)], dim=1)
        batch = Batch(
            positions=torch.cat([p[0] for p in parts]),
            numbers=torch.cat([p[1] for p in parts]),
            cell=torch.stack([p[2] for p in parts]),
            pbc=torch.stack([p[3] for p in parts]),
            system=torch.repeat_interleave(torch.arange(len(parts), device=self.device), n_atoms),
            n_atoms=n_atoms,
        )
        neighbors = Neighbors(edge_index, torch.cat([p[5] for p in parts]), self.periodic)
        energy = self.energy[list(indices)]
        forces = None if self.forces is None else torch.cat([self.forces[k] for k in indices])
        return batch, neighbors, energy, forces


def predict(model: torch.nn.Module, cache: FrameCache, batch_size: int = 32,
            forces: bool = True) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Model energies [B] (eV) and per-frame forces (eV/Å) of every cached frame."""
    indices = list(range(cache.n_frames))
    energies, all_forces = [], []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        batch, neighbors, _, _ = cache.collate(chunk)
        out = compute(model, batch, neighbors, forces=forces)
        energies.append(out.energy.detach().cpu().numpy())
        if forces:
            split = torch.split(out.forces.detach().cpu().double(), batch.n_atoms.tolist())
            all_forces.extend(f.numpy() for f in split)
    return np.concatenate(energies), (all_forces if forces else None)
