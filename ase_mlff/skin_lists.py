"""Per-system Verlet-skin neighbor lists of a batch, exact while atoms move and cells deform.

One class for the MD engine (:class:`ase_mlff.md.forcefield.ForceField`; NPT
deforms the cells) and the relaxation (:mod:`ase_mlff.optimize`; the cell
filter deforms them). Each system's list is built at cutoff + skin, at
positions r⁰ and cell h⁰ (rows are the cell vectors), and kept while it
still holds every pair closer than the cutoff r_c; then that system alone is
rebuilt, the others keep theirs.

The rebuild rule. Let G = (h⁰)⁻¹h be the deformation of the cell since the
build (h = h⁰G; G = 1 for a fixed cell), and pull the current positions back
into the build's cell: what is left is each atom's displacement beyond the
affine one, in the frame of the build,

    δ_i = r_i G⁻¹ − r⁰_i                                          [N, 3], Å

An edge (i, j, S) keeps its integer shift, so its vector now, d = r_j − r_i + S h,
pulled back is d G⁻¹ = r_j G⁻¹ − r_i G⁻¹ + S h⁰ = d⁰ + δ_j − δ_i, hence

    |d⁰| ≤ ‖G⁻¹‖ |d| + 2 max_i |δ_i|        (‖·‖ the spectral norm, ‖G⁻¹‖ = 1/σ_min(G))

A pair missing from the list had |d⁰| ≥ r_c + s at the build; it can be
closer than r_c now only if r_c + s < ‖G⁻¹‖ r_c + 2 max|δ|. So a system's list
is kept while

    2 max_i |δ_i| ≤ r_c + s − ‖G⁻¹‖ r_c                        (G = 1: max|δ| ≤ s/2)

and rebuilt otherwise (NaN counts as otherwise). This keeps a list at least
as long as either rule it replaced: MD's bounded the displacement in the
current frame, 2 max|δG| ≤ σ_min(G)(r_c + s) − r_c, and |δG| ≥ σ_min(G)|δ|;
the relaxation's bounded max|δ| by the largest move of the unit-cell
coordinates times ‖F_build‖. An expanding cell (‖G⁻¹‖ < 1) widens the margin.

Pairs of a list now beyond the cutoff are dropped before the model sees them,
so the model always gets exactly the pairs a fresh list would give; except
for a model that zeroes them itself (``prune=False``, for
``Potential.zero_beyond_cutoff``: Lennard-Jones), which gets the wide lists as
they are, with the same results (sums of the same terms and of exact zeros). The same
bounds tell which edges need measuring: an edge of length d⁰ at the build is
now between (d⁰ − 2 max|δ|)/‖G⁻¹‖ and ‖G‖(d⁰ + 2 max|δ|) long, so only those
whose interval holds the cutoff are measured (a thin shell while atoms have
barely moved), and when the pairs inside are those of the previous call, its
edges are returned again. With fixed cells the filter is skipped altogether
while no pair of any list was within skin of the cutoff at its build.

Edges are kept in a canonical order, sorted by (i, j, shift): the pairs the
model sees, and their order, depend only on the current geometry, not on
when or with which other systems a list was built, so MD restarts repeat the
uninterrupted run bit for bit. When systems leave the batch (converged,
blown up), :meth:`BatchedNeighbors.select` keeps the lists of the others.
Per call the host learns one flag (does any system need a rebuild?); the
rest stays on the device. The lists are handed out as ``ordered``
:class:`~ase_mlff.neighbors.Neighbors`, one object for as long as they
stand, so that what the force path derives from them (its sums over each
atom's edges, S·cell: :func:`~ase_mlff.neighbors.edge_vectors`) is built
once per list.
"""

from __future__ import annotations

import torch

from .batch import Batch
from .neighbors import (
    NeighborList,
    Neighbors,
    one_per_pair,
    shift_codes,
    shift_table,
    takes_half_lists,
    takes_wide_lists,
)

#: lists of at most this many edges are filtered by measuring every edge (``_measure_all``): one
#: ethanol's filter took 67 µs through the bounds and 15 µs so (one thread)
MEASURE_ALL_EDGES = 2048


class BatchedNeighbors:
    """Per-system Verlet-skin lists of a batch (exact by construction, module doc).

    Called with the batch's current geometry, a :class:`~ase_mlff.batch.Batch` or anything
    with its fields (an ``MDState``), it returns the edges closer than the cutoff in the
    batch's atom indexing.

    Args:
        cutoff: the model's cutoff, Å. skin: Å (0: every system rebuilt on every call).
        backend: neighbor-list backend (see :mod:`ase_mlff.neighbors`).
        deforming: the cells may change between calls (the rule then bounds the cell's
            deformation too; False skips that work and assumes fixed cells).
        half: keep each pair once (:func:`~ase_mlff.neighbors.one_per_pair`; ``Neighbors.half``),
            for a model that takes half lists (``takes_half_lists``): half the edges to store,
            filter and turn into vectors.
        prune: drop the pairs now beyond the cutoff (False: return every pair of the lists, those
            within cutoff + skin, for a model that zeroes the others itself, ``takes_wide_lists``).
    """

    def __init__(self, cutoff: float, skin: float = 1.0, backend: str = "auto", deforming: bool = False,
                 half: bool = False, prune: bool = True):
        if not skin >= 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.deforming, self.half, self.prune = bool(deforming), bool(half), bool(prune)
        self.wide = NeighborList(self.cutoff + self.skin, backend)
        self.rebuilds = 0
        self.reset()

    @classmethod
    def for_model(cls, model, skin: float = 1.0, backend: str = "auto", **options):
        """Lists for ``model`` (or a compiled one): its cutoff, half lists if it takes them, unpruned
        if it zeroes the pairs beyond its cutoff itself; ``options`` as the constructor's."""
        return cls(model.cutoff, skin, backend, half=takes_half_lists(model), prune=not takes_wide_lists(model),
                   **options)

    def reset(self) -> None:
        """Forget every list (the next call builds all)."""
        # set together by _rebuild and select, cleared together here
        self.reference: torch.Tensor | None = None  # [N, 3] Å, positions at each system's build
        self.reference_cell: torch.Tensor | None = None  # [B, 3, 3] Å, cells at each system's build
        self.edge_index: torch.Tensor | None = None  # [2, E] wide lists, canonical order
        self.shifts: torch.Tensor | None = None  # [E, 3] int64
        self.periodic = False
        self.near: torch.Tensor | None = None  # [B] bool, a pair within skin of the cutoff at the build
        self._reach = 0  # largest |shift component| of any edge
        self._code: torch.Tensor | None = None  # [E] into the [B·K] table of S·cell, see _vectors
        self._built: torch.Tensor | None = None  # [E] Å, each edge's length at its system's build
        self._edge_system: torch.Tensor | None = None  # [E] system of each edge
        self._needs_filter = True
        self._last: tuple | None = None  # (inside [E] bool, Neighbors) of the previous call
        self._whole: Neighbors | None = None  # the lists as they are, served while unfiltered

    def follow_deformation(self) -> None:
        """From now on the cells may change between calls (``deforming``); the lists built so far stay."""
        if not self.deforming:
            self.deforming = True
            self._needs_filter = self.skin > 0
            self._last = self._whole = None

    # -- per call ----------------------------------------------------------------------------
    def __call__(self, batch) -> Neighbors:
        """[2, E] edges closer than the cutoff, and their shifts, of ``batch``'s current geometry."""
        if self.reference is not None and self.reference.shape != batch.positions.shape:
            self.reset()  # other atoms: nothing stored applies
        n_systems = batch.cell.shape[0]
        bounds = None  # per system (max|δ|², ‖G⁻¹‖, ‖G‖); None: every list was just built
        if self.reference is None or self.skin == 0:
            self._rebuild(batch, torch.ones(n_systems, dtype=torch.bool, device=batch.cell.device))
        else:
            if self.deforming:
                bounds = self._bounds(batch)
                due = bool(_stale(self.cutoff, self.skin, *bounds).any())  # the one host sync of a call
            else:
                moved = _squared_norms(batch.positions - self.reference)  # [N] Å²
                # one reduction over all atoms decides: no atom moved skin/2, no list is stale (the
                # one host sync of a call; NaN counts as moved)
                due = not bool(moved.amax() <= (0.5 * self.skin) ** 2)
                if due or (self.prune and self._needs_filter and not self._measure_all()):
                    bounds = (self._largest(moved, batch), None, None)
            if due:
                # with them, the systems past half their allowance: one search now instead of
                # another soon (a relaxation's 64 cells needed 49 searches of 1-7 cells each)
                stale = _stale(self.cutoff, self.skin, *bounds, share=0.5)
                self._rebuild(batch, stale)
                moved, stretch, squeeze = bounds  # a rebuilt system has moved by nothing since
                bounds = (torch.where(stale, 0.0, moved), None if stretch is None else torch.where(stale, 1.0, stretch),
                          None if squeeze is None else torch.where(stale, 1.0, squeeze))
        if not (self._needs_filter and self.prune):
            if self._whole is None:  # the same object while the lists stand: what edge_vectors stores stays
                self._whole = self._serve(self.edge_index, self.shifts, self._code)
            return self._whole
        inside = (_squared_norms(self._vectors(batch)) < self.cutoff ** 2 if self._measure_all()
                  else self._inside(batch, bounds))
        if self._last is not None and torch.equal(inside, self._last[0]):
            return self._last[1]  # the same pairs as the previous call
        kept = torch.nonzero(inside).squeeze(1)
        neighbors = self._serve(self.edge_index.index_select(1, kept), self.shifts.index_select(0, kept),
                                self._code.index_select(0, kept) if self.periodic else None)
        self._last = (inside, neighbors)
        return neighbors

    def _serve(self, edge_index, shifts, code) -> Neighbors:
        """The Neighbors handed out for these edges (the stored ones or a subset) and their shift codes."""
        return Neighbors(edge_index, shifts, self.periodic, self._reach, code if self.periodic else None, self.half,
                         ordered=True)

    def _measure_all(self) -> bool:
        """Whether the filter measures every stored edge: for a short list (a molecule, a few small
        cells) that is cheaper than the bounds that pick out the few that need it."""
        return self.edge_index.shape[1] <= MEASURE_ALL_EDGES

    def _inside(self, batch, bounds) -> torch.Tensor:
        """[E] bool, the stored edges now shorter than the cutoff.

        Only edges whose length at the build lies within the bounds of the module doc's
        rule of the cutoff are measured: for a system whose atoms moved by at most m
        (max|δ|) since its build, an edge of length d⁰ then is now at most
        ‖G‖(d⁰ + 2m) and at least (d⁰ − 2m)/‖G⁻¹‖ long.
        """
        if bounds is None:  # everything was just built
            return self._built < self.cutoff
        moved, stretch, squeeze = bounds  # [B]: max|δ|² Å², ‖G⁻¹‖, ‖G‖ (None: fixed cells, 1)
        m = moved.sqrt()
        margin = 1e-9 * self.cutoff  # rounding of d⁰ and of the bounds: such edges are measured
        inner = self.cutoff if squeeze is None else self.cutoff / squeeze
        outer = self.cutoff if stretch is None else self.cutoff * stretch
        surely_in = (inner - 2.0 * m - margin).index_select(0, self._edge_system)  # [E] Å
        surely_out = (outer + 2.0 * m + margin).index_select(0, self._edge_system)
        inside = self._built < surely_in
        measure = torch.nonzero(~inside & (self._built < surely_out)).squeeze(1)
        if measure.numel():
            inside[measure] = _squared_norms(self._vectors(batch, measure)) < self.cutoff ** 2
        return inside

    def closest(self, batch) -> torch.Tensor:
        """[B] Å, each system's shortest pair distance at the current positions (inf: no pairs).

        Read from the wide lists, which hold every pair within the cutoff (the rule) and so
        every close contact.
        """
        n_systems = batch.cell.shape[0]
        shortest = torch.full((n_systems,), float("inf"), dtype=batch.positions.dtype, device=batch.positions.device)
        if self.reference is None or self.reference.shape != batch.positions.shape or not self.edge_index.numel():
            return shortest
        distances = torch.linalg.vector_norm(self._vectors(batch), dim=1)
        return shortest.scatter_reduce_(0, batch.system[self.edge_index[0]], distances, "amin")

    def select(self, keep: torch.Tensor) -> None:
        """Follow the batch reduced to its systems ``keep`` ([K] indices, ascending): their lists stay."""
        if self.reference is None:
            return
        kept_systems = torch.zeros(self.reference_cell.shape[0], dtype=torch.bool, device=keep.device)
        kept_systems[keep] = True
        atom_kept = kept_systems[self._system]  # [N]
        renumber = torch.cumsum(atom_kept.long(), 0) - 1  # old atom -> new atom (monotone: the order stays)
        new_system = torch.cumsum(kept_systems.long(), 0) - 1  # old system -> new system
        edges = torch.nonzero(kept_systems.index_select(0, self._edge_system)).squeeze(1)
        # index_select rather than advanced indexing, which costs about twice as much on the CPU
        self.edge_index = renumber.index_select(0, self.edge_index.index_select(1, edges).reshape(-1)).view(2, -1)
        self.shifts = self.shifts.index_select(0, edges)
        old_edge_system = self._edge_system.index_select(0, edges)
        self._edge_system = new_system.index_select(0, old_edge_system)
        # an edge's row of the shift table is system·K + its shift's row (shift_codes): move it to the new system
        table_rows = (2 * self._reach + 1) ** 3
        self._code = self._code.index_select(0, edges).sub_(old_edge_system.sub_(self._edge_system).mul_(table_rows))
        self._system = new_system.index_select(0, self._system[atom_kept])
        self.reference = self.reference[atom_kept]
        self.reference_cell, self.near = self.reference_cell[keep], self.near[keep]
        self._built = self._built.index_select(0, edges)
        self._last = self._whole = None
        self._needs_filter = self.skin > 0 and (self.deforming or bool(self.near.any()))

    # -- the rule ------------------------------------------------------------------------------
    def _bounds(self, batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per system [B]: max|δ|² (Å², module doc), ‖G⁻¹‖ and ‖G‖ (None, None for fixed cells: 1)."""
        positions, system = batch.positions, batch.system
        if self.deforming:
            back = torch.linalg.solve(batch.cell, self.reference_cell)  # G⁻¹ = h⁻¹h⁰, [B, 3, 3]
            pulled = torch.bmm(positions.unsqueeze(1), back[system]).squeeze(1)  # r G⁻¹, [N, 3] Å
            moved = _squared_norms(pulled - self.reference)  # |δ|², Å²
            eigenvalues = torch.linalg.eigvalsh(torch.bmm(back.transpose(1, 2), back)).clamp_min(0.0)  # [B, 3]
            stretch = eigenvalues[:, -1].sqrt()  # ‖G⁻¹‖
            squeeze = 1.0 / eigenvalues[:, 0].sqrt()  # ‖G‖ = 1/σ_min(G⁻¹)
        else:
            moved = _squared_norms(positions - self.reference)
            stretch = squeeze = None
        return self._largest(moved, batch), stretch, squeeze

    @staticmethod
    def _largest(moved: torch.Tensor, batch) -> torch.Tensor:
        """[B] each system's largest entry of the per-atom ``moved`` [N]."""
        return moved.new_zeros(batch.cell.shape[0]).scatter_reduce_(0, batch.system, moved, "amax", include_self=False)

    # -- building --------------------------------------------------------------------------------
    def _rebuild(self, batch, stale: torch.Tensor) -> None:
        """New lists for the ``stale`` systems [B]; the others keep theirs.

        A system whose positions are no longer finite (it blew up; its owner stops it)
        gets no edges instead of a search that could not succeed.
        """
        self.rebuilds += 1
        positions, system = batch.positions, batch.system
        n_atoms = positions.shape[0]
        not_finite = torch.zeros(stale.shape[0], dtype=torch.long, device=stale.device).index_add_(
            0, system, (~torch.isfinite(positions).all(1)).long()) > 0
        build = stale & ~not_finite
        first = self.reference is None
        new_index = torch.zeros((2, 0), dtype=torch.long, device=positions.device)
        new_shifts = torch.zeros((0, 3), dtype=torch.long, device=positions.device)
        new_reach = 0  # largest |shift component| of the new edges
        if bool(build.any()):
            systems = torch.nonzero(build).squeeze(1)
            atoms = torch.nonzero(build[system]).squeeze(1)  # [n] global atom indices, sorted
            remap = torch.cumsum(build.long(), 0) - 1
            part = Batch(positions=positions[atoms], numbers=batch.numbers[atoms], cell=batch.cell[systems],
                         pbc=batch.pbc[systems], system=remap[system[atoms]], n_atoms=batch.n_atoms[systems])
            built = self.wide(part) if self.skin > 0 else NeighborList(self.cutoff, self.wide.backend)(part)
            new_index, new_shifts = atoms[built.edge_index], built.shifts.to(torch.long)
            if self.half:
                kept_half = torch.nonzero(one_per_pair(new_index, new_shifts)).squeeze(1)
                new_index, new_shifts = new_index.index_select(1, kept_half), new_shifts.index_select(0, kept_half)
            new_reach = built.reach or 0  # the builder measured it (None: open systems, no shifts)
            self.periodic = self.periodic or built.periodic
        if first:
            kept = torch.zeros(0, dtype=torch.long, device=positions.device)
            self.reference, self.reference_cell = positions.clone(), batch.cell.clone()
            self._system = system.clone()
        else:
            kept = torch.nonzero(~stale[system[self.edge_index[0]]]).squeeze(1)
            self.reference = torch.where(stale[system].unsqueeze(1), positions, self.reference)
            self.reference_cell = torch.where(stale.view(-1, 1, 1), batch.cell, self.reference_cell)
        # the reach of the kept edges is at most the old one (a table a little wider than
        # needed after systems left costs nothing)
        reach = max(new_reach, 0 if first else self._reach)
        old_index = new_index[:, :0] if first else self.edge_index
        order, at_new = _merge(old_index, kept, new_index, new_shifts, n_atoms, reach)  # into cat([old, new])
        self.edge_index = torch.cat([old_index, new_index], 1).index_select(1, order)
        self.shifts = torch.cat([new_shifts[:0] if first else self.shifts, new_shifts]).index_select(0, order)
        if first or reach != self._reach:
            self._index_shifts(reach)
        else:  # the kept edges' entries stand
            self._code = torch.cat([self._code, self._codes(new_index, new_shifts)]).index_select(0, order)
        self._edge_system = self._system.index_select(0, self.edge_index[0])
        built = torch.linalg.vector_norm(self._vectors(batch, at_new), dim=1)  # [E_new] Å, new edges now
        if first:
            self._built = built
        else:  # the kept edges keep their lengths at their builds
            self._built = torch.cat([self._built, built.new_zeros(new_index.shape[1])]).index_select(0, order)
            self._built[at_new] = built
        if self.skin > 0 and not self.deforming:  # fixed cells: is there anything the filter could drop?
            band = (built > self.cutoff - self.skin) & (built < self.cutoff + self.skin)
            near = torch.zeros_like(stale).index_fill_(0, self._edge_system[at_new][band], True)
            self.near = near if first else torch.where(stale, near, self.near)
        elif first:
            self.near = torch.ones_like(stale)
        self._needs_filter = self.skin > 0 and (self.deforming or bool(self.near.any()))
        self._last = self._whole = None

    def _index_shifts(self, reach: int) -> None:
        """Each edge's entry in the [B·K] table of S·cell over the K = (2·reach + 1)³ shifts within reach."""
        self._reach = reach
        self._code = self._codes(self.edge_index, self.shifts)

    def _codes(self, edge_index: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        return shift_codes(self._system[edge_index[0]], shifts, self._reach)

    def _vectors(self, batch, edges: torch.Tensor | None = None) -> torch.Tensor:
        """[E, 3] Å, r_j − r_i + S·cell of the stored edges (or of those at ``edges``), not differentiated."""
        positions = batch.positions
        i, j = self.edge_index if edges is None else self.edge_index[:, edges]
        code = self._code if edges is None else self._code[edges]
        vectors = positions.index_select(0, j) - positions.index_select(0, i)
        if not self.periodic:
            return vectors
        # S·cell from the table of the shifts within reach (neighbors.shift_vectors), with the
        # stored edges' codes
        return vectors + shift_table(batch.cell, self._reach).index_select(0, code)


def _squared_norms(vectors: torch.Tensor) -> torch.Tensor:
    """[E] |v|² of [E, 3] rows, as x² + y² + z² (``square().sum(1)`` reduces a length-3 axis ~10x slower on CPU)."""
    x, y, z = vectors.unbind(1)
    return x * x + y * y + z * z


def _stale(cutoff: float, skin: float, moved: torch.Tensor, stretch: torch.Tensor | None, squeeze,
           share: float = 1.0) -> torch.Tensor:
    """[B] bool: systems whose list may miss a pair closer than the cutoff, 2 max|δ| > r_c + s − ‖G⁻¹‖ r_c
    (with ``share`` < 1: that have moved more than that share of what the rule allows).

    NaN (a blown-up system) counts as stale.
    """
    if stretch is None:  # fixed cells: max|δ| ≤ s/2
        return ~(moved <= (share * 0.5 * skin) ** 2)
    allowed = 0.5 * (cutoff + skin - stretch * cutoff)  # Å, the largest max|δ| the list allows
    return ~((moved <= (share * allowed).square()) & (allowed >= 0))


def _merge(old_index, kept, new_index, new_shifts, n_atoms: int, reach: int):
    """Where each edge of the merged list comes from in cat([old, new]), and where the new ones went.

    The merged list holds the ``kept`` edges of the old list (sorted already) and the new
    ones, sorted by (i, j, shift). Kept and new edges belong to different systems, hence
    different atoms i: only the new edges are sorted, and then every atom's block of edges
    (all kept or all new) goes to its place in i order, found from per-atom counts, at
    O(E) cost. Returns ([E] indices into cat([old, new]), [E_new] positions of the new edges).
    """
    width = 2 * reach + 1
    s = new_shifts + reach
    key = (new_index[0] * n_atoms + new_index[1]) * width ** 3 + (s[:, 0] * width + s[:, 1]) * width + s[:, 2]
    new_order = torch.argsort(key)
    n_old, n_kept, n_new = old_index.shape[1], kept.shape[0], new_index.shape[1]
    if not n_kept:
        return n_old + new_order, torch.arange(n_new, device=new_index.device)
    kept_centres, new_centres = old_index[0].index_select(0, kept), new_index[0].index_select(0, new_order)
    kept_count = torch.bincount(kept_centres, minlength=n_atoms)  # [N] edges per atom
    new_count = torch.bincount(new_centres, minlength=n_atoms)
    start = torch.cumsum(kept_count + new_count, 0) - kept_count - new_count  # [N] atom i's first edge

    def places(centres: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        own_start = torch.cumsum(count, 0) - count  # atom i's first edge in its own sorted list
        return start[centres] + torch.arange(centres.shape[0], device=centres.device) - own_start[centres]

    at_new = places(new_centres, new_count)
    order = torch.empty(n_kept + n_new, dtype=torch.long, device=new_index.device)
    order[places(kept_centres, kept_count)] = kept
    order[at_new] = n_old + new_order
    return order, at_new
