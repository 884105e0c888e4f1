"""Per-system Verlet-skin neighbor lists for a relaxation whose cells deform, exact by construction.

A system's list is built on its current geometry with radius r_c + skin and
kept while it still holds every pair closer than r_c. Positions are
r = u Fᵀ (u: coordinates in the starting cell, F: the deformation gradient;
F = I without a cell filter), so the pair vector of an edge (i, j, S) is
D Fᵀ with D = u_j − u_i + S·cell₀. Between the build (u_b, F_b) and now,
|D − D_b| ≤ 2m with m = max_i |u_i − u_b,i|, hence for a pair now closer than r_c

    d_b = |D_b F_bᵀ| ≤ |D Fᵀ| ‖F_b F⁻¹‖ + 2m ‖F_b‖ < r_c ‖F_b F⁻¹‖ + 2m ‖F_b‖

(‖·‖ the spectral norm). While that bound stays below r_c + skin the pair
was in the list; once it does not, the system is rebuilt (the others keep
their lists). Without a cell it is the MD rule, 2m < skin. Pairs of the list
now beyond r_c are dropped before the model sees them, so the model always
gets exactly the pairs a fresh list would give.
"""

from __future__ import annotations

import torch

from ..batch import Batch
from ..neighbors import NeighborList, Neighbors


class SkinNeighbors:
    """Lists of a relaxation's systems, rebuilt per system when the bound above fails.

    Args:
        cutoff: the model's cutoff, Å. skin: Å (0: every system rebuilt on every call).
        backend: neighbor-list backend (see :mod:`ase_mlff.neighbors`).
    """

    def __init__(self, cutoff: float, skin: float, backend: str = "auto"):
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.wide = NeighborList(self.cutoff + self.skin, backend)
        self.edge_index: torch.Tensor | None = None  # [2, E] global atom indices
        self.shifts: torch.Tensor | None = None  # [E, 3] int64
        self.periodic = False
        self.reference: torch.Tensor | None = None  # [N, 3] u at each system's build
        self.built_gradient: torch.Tensor | None = None  # [B, 3, 3] F at each system's build
        self.unique_shifts: torch.Tensor | None = None  # [K, 3] shifts within reach; shift_id: [E] into them
        self.shift_id: torch.Tensor | None = None
        self.rebuilds = 0
        self._active = None  # edges of the current active set, see __call__
        self._eye = None

    def stale(self, reference_positions: torch.Tensor, gradient: torch.Tensor, system: torch.Tensor) -> torch.Tensor:
        """[B] bool: systems whose list may miss a pair closer than the cutoff."""
        n_systems = gradient.shape[0]
        if self.reference is None or self.skin == 0:
            return torch.ones(n_systems, dtype=torch.bool, device=gradient.device)
        moved = (reference_positions - self.reference).square().sum(1)  # [N], Å²
        m2 = moved.new_zeros(n_systems).scatter_reduce_(0, system, moved, "amax", include_self=True)
        spread = torch.linalg.matrix_norm(self.built_gradient @ torch.linalg.inv(gradient), ord=2)
        bound = self.cutoff * spread + 2.0 * torch.sqrt(m2) * torch.linalg.matrix_norm(self.built_gradient, ord=2)
        return ~(bound < self.cutoff + self.skin)  # NaN (a blown-up system) counts as stale

    def __call__(self, batch: Batch, reference_positions: torch.Tensor, gradient: torch.Tensor,
                 active: torch.Tensor, atom_mask: torch.Tensor, active_key: bytes) -> Neighbors:
        """Edges of the active systems, indexed within their sub-batch (atoms ``atom_mask`` of ``batch``).

        Args:
            batch: every system, current (deformed) positions and cells.
            reference_positions: u [N, 3]. gradient: F [B, 3, 3] (None: no cell filter, F = I).
            active: [B] systems evaluated now; atom_mask: [N], their atoms; active_key: names
                the active set (the edges of the active systems are cached per set and list).
        """
        identity = gradient is None
        if identity:
            gradient = self._identity(batch)
        rebuild = self.stale(reference_positions, gradient, batch.system) & active
        if bool(rebuild.any()):  # the one host sync of a step
            self._rebuild(batch, rebuild, active, reference_positions, gradient)
        if self._active is None or self._active[0] != active_key:
            keep = active[batch.system[self.edge_index[0]]]
            local = torch.cumsum(atom_mask.long(), 0) - 1  # global atom -> index in the sub-batch
            index = self.edge_index[:, keep]
            code = batch.system[index[0]] * self.unique_shifts.shape[0] + self.shift_id[keep]
            self._active = (active_key, index, local[index], self.shifts[keep], code)
        _, index, local_index, shifts, code = self._active
        # r_j − r_i + S·cell, S·cell from a [B, K] table of the K shifts within reach (a gather
        # per edge instead of a 3x3 product per edge)
        table = torch.einsum("kc,bcd->bkd", self.unique_shifts.to(batch.cell.dtype), batch.cell).reshape(-1, 3)
        vectors = batch.positions[index[1]] - batch.positions[index[0]] + table[code]
        inside = vectors.square().sum(1) < self.cutoff ** 2
        return Neighbors(local_index[:, inside], shifts[inside], self.periodic)

    def _identity(self, batch: Batch) -> torch.Tensor:
        if self._eye is None or self._eye.shape[0] != batch.n_systems:
            self._eye = torch.eye(3, dtype=batch.cell.dtype, device=batch.cell.device).expand(batch.n_systems, 3, 3)
        return self._eye

    def _rebuild(self, batch: Batch, rebuild: torch.Tensor, active: torch.Tensor, reference_positions,
                 gradient) -> None:
        """New lists for the ``rebuild`` systems; the other active ones keep theirs, and the lists of
        systems no longer active (converged or stopped: they never return) are dropped."""
        self.rebuilds += 1
        self._active = None
        device = batch.positions.device
        atoms = torch.nonzero(rebuild[batch.system]).squeeze(1)  # global indices, sorted
        systems = torch.nonzero(rebuild).squeeze(1)
        remap = torch.cumsum(rebuild.long(), 0) - 1
        sub = Batch(positions=batch.positions[atoms], numbers=batch.numbers[atoms], cell=batch.cell[systems],
                    pbc=batch.pbc[systems], system=remap[batch.system[atoms]], n_atoms=batch.n_atoms[systems])
        built = self.wide(sub) if self.skin > 0 else NeighborList(self.cutoff, self.wide.backend)(sub)
        new_index, new_shifts = atoms[built.edge_index], built.shifts.to(torch.long)
        if self.edge_index is None:
            self.edge_index, self.shifts, self.periodic = new_index, new_shifts, built.periodic
            self.reference = reference_positions.clone()
            self.built_gradient = gradient.clone()
        else:
            kept = (active & ~rebuild)[batch.system[self.edge_index[0]]]
            self.edge_index = torch.cat([self.edge_index[:, kept], new_index.to(device)], 1)
            self.shifts = torch.cat([self.shifts[kept], new_shifts], 0)
            self.periodic = self.periodic or built.periodic
            self.reference = torch.where(rebuild[batch.system].unsqueeze(1), reference_positions, self.reference)
            self.built_gradient = torch.where(rebuild.view(-1, 1, 1), gradient, self.built_gradient)
        # every shift S with |S_k| <= reach, numbered in mixed radix: the per-step table of S·cell
        # is then [B, width³] and an edge's entry a fixed number (no search, no torch.unique)
        reach = int(self.shifts.abs().max()) if self.shifts.numel() else 0
        width = 2 * reach + 1
        grid = torch.arange(width ** 3, device=device)
        self.unique_shifts = torch.stack([grid // (width * width), grid // width % width, grid % width], 1) - reach
        s = self.shifts + reach
        self.shift_id = (s[:, 0] * width + s[:, 1]) * width + s[:, 2]
