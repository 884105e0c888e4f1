"""Forces for a batched MD state: per-system Verlet-skin neighbor lists and one model call.

The neighbor list of each system is built at cutoff + skin and kept until
one of *its* atoms has moved more than skin/2 since its build; then that
system alone is rebuilt (the others keep their lists). Before the model
sees them, stored pairs now beyond the cutoff are dropped, so the model
gets exactly the pairs a fresh list would give (as ``MLFFCalculator`` does
between calls; see its ``_SkinNeighborList``).

Edges are kept in a canonical order, sorted by (i, j, shift): the pairs the
model sees, and their order, depend only on the current positions, not on
when or with which other systems a list was built. Restarts therefore
repeat the uninterrupted run bit for bit.

When the cell deforms (NPT, ``deforming=True``), a list built at positions
r⁰ and cell h⁰ stays exact while every pair that was beyond cutoff + skin is
still beyond the cutoff. With F = (h⁰)⁻¹h the cell's deformation since the
build and u_i = r_i − r⁰_i F each atom's displacement beyond the affine one,
every pair vector (images included: the integer shifts are fixed) is
d' = d⁰F + u_j − u_i, hence

    |d'| ≥ σ_min(F) |d⁰| − 2 max|u| ≥ σ_min(F)(r_c + s) − 2 max|u|

with σ_min(F)² the smallest eigenvalue of FᵀF. A system is rebuilt when
max|u| > (σ_min(F)(r_c + s) − r_c) / 2; for F = 1 this is the skin/2 rule.
An expanding cell (σ_min > 1) only widens the margin. Pairs that came
closer are in the list already; those now beyond the
cutoff are dropped before the model sees them (always, in this mode).

Per step the host learns one flag (did any system move far enough to need
a rebuild?); everything else stays on the device.
"""

from __future__ import annotations

import torch

from ..batch import Batch
from ..compiled import compiled
from ..forces import compute
from ..neighbors import NeighborList, Neighbors, edge_vectors
from .state import MDState


def _canonical(edge_index: torch.Tensor, shifts: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """Permutation that sorts edges by (i, j, shift)."""
    if edge_index.shape[1] == 0:
        return torch.zeros(0, dtype=torch.long, device=edge_index.device)
    reach = int(shifts.abs().max()) if shifts.numel() else 0
    width = 2 * reach + 1
    s = shifts + reach
    shift_key = (s[:, 0] * width + s[:, 1]) * width + s[:, 2]
    key = (edge_index[0] * n_atoms + edge_index[1]) * (width ** 3) + shift_key
    return torch.argsort(key)


class BatchedNeighbors:
    """Per-system Verlet-skin lists for an :class:`MDState` (exact by construction).

    Args:
        cutoff: the model's cutoff, Å. skin: Å (0: rebuild every step).
        backend: neighbor-list backend (see :mod:`ase_mlff.neighbors`).
        deforming: the cells change between calls (module doc: the rebuild rule then
            bounds the affine change of every pair as well as the displacements).
    """

    def __init__(self, cutoff: float, skin: float = 1.0, backend: str = "auto", deforming: bool = False):
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.deforming = bool(deforming)
        self.reference_cell: torch.Tensor | None = None  # [B, 3, 3] cells at each system's build
        self.wide = NeighborList(self.cutoff + self.skin, backend)
        self.reference: torch.Tensor | None = None  # [N, 3] positions at each system's build
        self.edge_index: torch.Tensor | None = None  # [2, E] wide list, canonical order
        self.shifts: torch.Tensor | None = None
        self.periodic = False
        self.near: torch.Tensor | None = None  # [B] some pair of the system within skin of the cutoff
        self._needs_filter = True
        self.rebuilds = 0
        # no atom moved more than skin/2 since its system's build: no list is stale (fixed cells)
        self._quiet = (0.5 * self.skin) ** 2

    def reset(self) -> None:
        self.reference = None

    def __call__(self, state: MDState) -> Neighbors:
        positions = state.positions
        if self.reference is not None and self.reference.shape != positions.shape:
            self.reset()  # other atoms: nothing stored applies
        if self.reference is None or self.skin == 0:
            self._rebuild(state, torch.ones(state.n_systems, dtype=torch.bool, device=state.device))
        elif self.deforming or not bool((positions - self.reference).square().sum(1).amax() <= self._quiet):
            # some system may need a new list (the one host sync of a step; NaN lands here too)
            stale = self._stale(state)
            if bool(stale.any()):
                self._rebuild(state, stale)
        n = Neighbors(self.edge_index, self.shifts, self.periodic)
        if not self._needs_filter:
            return n
        vectors = edge_vectors(positions, state.cell, state.system, n)
        inside = vectors.square().sum(1) < self.cutoff ** 2
        return Neighbors(n.edge_index[:, inside], n.shifts[inside], n.periodic)

    def closest(self, state: MDState) -> torch.Tensor:
        """[B] Å, each system's shortest pair distance at the current positions (inf: no pairs).

        Read from the wide list, which holds every pair within the cutoff (the skin rule)
        and so every close contact.
        """
        shortest = torch.full((state.n_systems,), float("inf"), dtype=state.positions.dtype, device=state.device)
        if self.reference is None or self.reference.shape != state.positions.shape or not self.edge_index.numel():
            return shortest
        vectors = edge_vectors(state.positions, state.cell, state.system,
                               Neighbors(self.edge_index, self.shifts, self.periodic))
        distances = torch.linalg.vector_norm(vectors, dim=1)
        return shortest.scatter_reduce_(0, state.system[self.edge_index[0]], distances, "amin")

    def _stale(self, state: MDState) -> torch.Tensor:
        """[B] bool: systems whose list may miss a pair (module doc); NaN counts as stale."""
        if self.deforming:
            deformation = torch.linalg.solve(self.reference_cell, state.cell)  # F = (h⁰)⁻¹ h, [B, 3, 3]
            affine = torch.bmm(self.reference.unsqueeze(1), deformation[state.system]).squeeze(1)
            moved = (state.positions - affine).square().sum(1)
            gram = torch.bmm(deformation.transpose(1, 2), deformation)
            sigma_min = torch.linalg.eigvalsh(gram)[:, 0].clamp(min=0.0).sqrt()  # [B]
            allowed = 0.5 * (sigma_min * (self.cutoff + self.skin) - self.cutoff)  # Å, the largest max |u|
        else:
            moved = (state.positions - self.reference).square().sum(1)
            allowed = torch.full((state.n_systems,), 0.5 * self.skin, dtype=moved.dtype, device=moved.device)
        per_system = torch.zeros(state.n_systems, dtype=moved.dtype, device=moved.device)
        per_system.scatter_reduce_(0, state.system, moved, "amax", include_self=False)
        return ~((per_system <= allowed.square()) & (allowed > 0))

    def _rebuild(self, state: MDState, stale: torch.Tensor) -> None:
        """New lists for the ``stale`` systems [B]; the others keep theirs.

        A system whose positions are no longer finite (it blew up; the loop
        stops it at its next check) gets no edges instead of a search that
        could not succeed.
        """
        self.rebuilds += 1
        not_finite = torch.zeros(state.n_systems, dtype=torch.long, device=state.device).index_add_(
            0, state.system, (~torch.isfinite(state.positions).all(1)).long()) > 0
        build = stale & ~not_finite
        # reference, edges and near are set together here and cleared together by reset()
        keep = None if self.reference is None else ~stale[state.system[self.edge_index[0]]]
        parts_index, parts_shift = [], []
        periodic = False
        if keep is not None:
            parts_index.append(self.edge_index[:, keep])
            parts_shift.append(self.shifts[keep])
            periodic = self.periodic
        near = torch.zeros_like(stale)
        if bool(build.any()):
            systems = torch.nonzero(build).squeeze(1)
            atoms = torch.nonzero(build[state.system]).squeeze(1)  # [n] global atom indices, sorted
            sub_edges, sub_shifts, sub_periodic = self._build(state.select(systems).batch())
            sub_edges, sub_shifts = atoms[sub_edges], sub_shifts.to(torch.long)
            parts_index.append(sub_edges)
            parts_shift.append(sub_shifts)
            periodic = periodic or sub_periodic
            near = self._near(state, sub_edges, sub_shifts, sub_periodic)  # of the rebuilt systems only
        device = state.device
        edge_index = torch.cat(parts_index, 1) if parts_index else torch.zeros((2, 0), dtype=torch.long, device=device)
        shifts = torch.cat(parts_shift) if parts_shift else torch.zeros((0, 3), dtype=torch.long, device=device)
        if keep is None:
            self.reference = state.positions.clone()
            self.reference_cell = state.cell.clone()
        else:
            self.reference = torch.where(stale[state.system].unsqueeze(1), state.positions, self.reference)
            self.reference_cell = torch.where(stale.view(-1, 1, 1), state.cell, self.reference_cell)
        self.near = near if keep is None else torch.where(stale, near, self.near)
        order = _canonical(edge_index, shifts, state.positions.shape[0])
        self.edge_index, self.shifts, self.periodic = edge_index[:, order], shifts[order], periodic
        self._needs_filter = self.skin > 0 and (self.deforming or bool(self.near.any()))

    def _build(self, batch: Batch):
        n = self.wide(batch) if self.skin > 0 else NeighborList(self.cutoff, self.wide.backend)(batch)
        return n.edge_index, n.shifts, n.periodic

    def _near(self, state: MDState, edge_index, shifts, periodic) -> torch.Tensor:
        """[B] whether any pair lies within skin of the cutoff (only those can cross it)."""
        d = torch.linalg.vector_norm(edge_vectors(state.positions, state.cell, state.system,
                                                  Neighbors(edge_index, shifts, periodic)), dim=1)
        band = (d > self.cutoff - self.skin) & (d < self.cutoff + self.skin)
        near = torch.zeros(state.n_systems, dtype=torch.bool, device=d.device)
        return near.index_fill_(0, state.system[edge_index[0]][band], True)


class ForceField:
    """Energy [B] and forces [N, 3] (float64, eV and eV/Å) of an MD state from a potential.

    Args:
        model: an ase_mlff ``Potential`` (its dtype and device are the network's).
        skin, backend: see :class:`BatchedNeighbors`.
        stress: also set ``state.stress`` [B, 3, 3] eV/Å³ (same autograd call) and let the
            cells deform between calls (NPT).
        compile: evaluate the network under ``torch.compile`` (dynamic atom and
            edge counts); falls back to eager with one warning where compilation fails.
        evaluator: an already compiled model to use (the calculator's).
        dtype: of the edge vectors the network gets (default: its weights').
    """

    def __init__(self, model, skin: float = 1.0, backend: str = "auto", compile: bool = False,
                 evaluator=None, dtype: torch.dtype | None = None, stress: bool = False):
        self.model = model
        self.stress = bool(stress)
        self.neighbors = BatchedNeighbors(model.cutoff, skin, backend, deforming=self.stress)
        self.evaluator = evaluator if evaluator is not None else (compiled(model) if compile else model)
        from ..forces import model_dtype

        # the network's: edge vectors are rounded to it, nothing else (an analytic model has no
        # weights to say it, so the calculator's dtype decides)
        self.dtype = dtype or model_dtype(model) or torch.float64
        self._free: torch.Tensor | None = None  # the state.free that _fixed describes
        self._fixed = True

    def __call__(self, state: MDState) -> None:
        """Set ``state.energy`` and ``state.forces`` (zero on fixed atoms)."""
        neighbors = self.neighbors(state)
        output = self._evaluate(state.batch(), neighbors)
        forces = output.forces.to(torch.float64)  # both no-ops for a float64 batch, the engine's
        state.forces = forces * state.free.unsqueeze(1) if self._has_fixed(state) else forces
        state.energy = output.energy.to(torch.float64).detach()
        if self.stress:
            state.stress = output.stress.to(torch.float64).detach()

    def _has_fixed(self, state: MDState) -> bool:
        """Whether ``state`` holds fixed atoms; asked of the device once per ``free`` tensor (it is
        replaced, never changed in place, when systems leave the batch)."""
        if state.free is not self._free:
            self._free, self._fixed = state.free, not bool(state.free.all())
        return self._fixed

    def _evaluate(self, batch: Batch, neighbors: Neighbors):
        return compute(self.evaluator, batch, neighbors, forces=True, stress=self.stress, dtype=self.dtype)
