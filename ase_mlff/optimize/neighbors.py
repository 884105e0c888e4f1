"""The relaxation's view of the skin lists: one batch of which the still relaxing systems are evaluated.

The lists are :class:`ase_mlff.skin_lists.BatchedNeighbors` (the MD engine's,
with its rebuild rule, exact while the cell filter deforms the cells). A
relaxation keeps every structure in its tensors, and evaluates only the
``active`` ones (not yet converged or stopped); when that set shrinks the lists
follow it (:meth:`~ase_mlff.skin_lists.BatchedNeighbors.select`: systems leave
and never return), so no work is spent on converged structures. The lists of
the systems that leave are kept aside, in the relaxation's atom indexing
(:meth:`SkinNeighbors.final`): a system leaves at the geometry of its last
evaluation, where its list held every pair within the cutoff, so the one
evaluation after the loop (the stress of a positions-only relaxation) needs
no search.
"""

from __future__ import annotations

import torch

from ..batch import Batch
from ..neighbors import Neighbors, edge_vectors, largest_shift
from ..skin_lists import BatchedNeighbors, _squared_norms


class SkinNeighbors(BatchedNeighbors):
    """Skin lists of the ``active`` systems of a relaxation.

    Args:
        cutoff: the model's cutoff, Å. skin: Å (0: every system rebuilt on every call).
        backend: neighbor-list backend (see :mod:`ase_mlff.neighbors`).
        half, prune: as :class:`~ase_mlff.skin_lists.BatchedNeighbors`'s (``for_model`` sets them).
    """

    def __init__(self, cutoff: float, skin: float, backend: str = "auto", half: bool = False, prune: bool = True,
                 system: torch.Tensor | None = None):
        super().__init__(cutoff, skin, backend, deforming=False, half=half, prune=prune)
        self._active: tuple | None = None  # (key, [B] mask) of the active set the lists follow
        #: [N] system of each atom of the whole relaxation (None: the lists of leaving systems are dropped)
        self.system = system
        self._left: list[tuple[torch.Tensor, torch.Tensor]] = []  # (edges [2, e] in the whole indexing, shifts)

    def __call__(self, sub: Batch, gradient: torch.Tensor | None, active: torch.Tensor,
                 active_key: bytes) -> Neighbors:
        """Edges of the active systems, indexed within their sub-batch.

        Args:
            sub: the active systems alone, current (deformed) positions and cells (the
                relaxation's sub-batch; the rule needs only positions and cells, module doc of
                :mod:`ase_mlff.skin_lists`).
            gradient: the cell filter's deformation F [B, 3, 3], or None without a filter (fixed
                cells, the cheaper rule).
            active: [B] the systems in ``sub``; active_key: names that set (when it changes, the
                lists of the systems that left are dropped).
        """
        self.deforming = gradient is not None
        if self._active is None or self._active[0] != active_key:
            if self._active is not None:
                before = self._active[1]
                if bool((active & ~before).any()):  # a system came back: no list of it is kept
                    self.reset()
                    self._left = []
                else:
                    self._keep_leaving(before, active)
                    self.select(torch.nonzero(active[before]).squeeze(1))
            self._active = (active_key, active.clone())
        return super().__call__(sub)

    def _keep_leaving(self, before: torch.Tensor, active: torch.Tensor) -> None:
        """Set aside the lists of the systems in ``before`` and not in ``active``, in the whole indexing."""
        if self.system is None or self.reference is None:
            return
        leaving = (before & ~active)[before]  # [B_before]: in the lists' system indexing
        edges = torch.nonzero(leaving.index_select(0, self._edge_system)).squeeze(1)
        self._left.append((self._in_whole(before, self.edge_index.index_select(1, edges)),
                           self.shifts.index_select(0, edges)))

    def _in_whole(self, systems: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """``edge_index`` of lists that follow the ``systems`` [B] renumbered to the whole relaxation's atoms."""
        atoms = torch.nonzero(systems[self.system]).squeeze(1)  # the lists' atom -> the whole relaxation's
        return atoms.index_select(0, edge_index.reshape(-1)).view(2, -1)

    def final(self, wanted: torch.Tensor, sub: Batch) -> Neighbors | None:
        """Edges of the ``wanted`` systems [B] at their final geometry ``sub`` (those systems alone),
        from the lists they had when they left and the lists of the systems still active; None
        where these lists cannot serve (no record of leaving systems, or ``sub`` not finite).

        Each list held every pair within the cutoff at its system's last evaluation, which is
        where the system stayed; the pairs now beyond the cutoff are dropped unless the model
        zeroes them itself (``prune``), as in every call.
        """
        if self.system is None or self.reference is None or not bool(torch.isfinite(sub.positions).all()):
            return None
        parts = list(self._left)
        if self._active is not None:  # the systems still relaxing: their current lists
            parts.append((self._in_whole(self._active[1], self.edge_index), self.shifts))
        edge_index = torch.cat([p[0] for p in parts], 1)
        shifts = torch.cat([p[1] for p in parts])
        atom_wanted = wanted[self.system]
        renumber = torch.cumsum(atom_wanted.long(), 0) - 1  # whole -> sub indexing
        kept = torch.nonzero(atom_wanted.index_select(0, edge_index[0])).squeeze(1)
        edge_index = renumber.index_select(0, edge_index.index_select(1, kept).reshape(-1)).view(2, -1)
        shifts = shifts.index_select(0, kept)
        neighbors = Neighbors(edge_index, shifts, bool(sub.pbc.any()), largest_shift(shifts), half=self.half)
        if self.prune:
            # the skin lists' own filter, so that an edge at the cutoff is decided as in every call
            inside = _squared_norms(edge_vectors(sub.positions, sub.cell, sub.system, neighbors)) < self.cutoff ** 2
            kept = torch.nonzero(inside).squeeze(1)
            neighbors = Neighbors(edge_index.index_select(1, kept), shifts.index_select(0, kept), neighbors.periodic,
                                  neighbors.reach, half=self.half)
        return neighbors
