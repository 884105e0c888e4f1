"""The relaxation's view of the skin lists: one batch of which the still relaxing systems are evaluated.

The lists are :class:`ase_mlff.skin_lists.BatchedNeighbors` (the MD engine's,
with its rebuild rule, exact while the cell filter deforms the cells). A
relaxation keeps every structure in its tensors, and evaluates only the
``active`` ones (not yet converged or stopped); when that set shrinks the lists
follow it (:meth:`~ase_mlff.skin_lists.BatchedNeighbors.select`: systems leave
and never return), so no work is spent on converged structures.
"""

from __future__ import annotations

import torch

from ..batch import Batch
from ..neighbors import Neighbors
from ..skin_lists import BatchedNeighbors


class SkinNeighbors(BatchedNeighbors):
    """Skin lists of the ``active`` systems of a relaxation.

    Args:
        cutoff: the model's cutoff, Å. skin: Å (0: every system rebuilt on every call).
        backend: neighbor-list backend (see :mod:`ase_mlff.neighbors`).
        half: each pair once (``BatchedNeighbors``), for a model that takes half lists.
    """

    def __init__(self, cutoff: float, skin: float, backend: str = "auto", half: bool = False):
        super().__init__(cutoff, skin, backend, deforming=False, half=half)
        self._active: tuple | None = None  # (key, [B] mask, [A] systems, [n] atoms' system in the sub-batch)

    def __call__(self, batch: Batch, reference_positions: torch.Tensor, gradient: torch.Tensor | None,
                 active: torch.Tensor, atom_mask: torch.Tensor, active_key: bytes) -> Neighbors:
        """Edges of the active systems, indexed within their sub-batch (atoms ``atom_mask`` of ``batch``).

        Args:
            batch: every system, current (deformed) positions and cells.
            reference_positions: the optimizer's coordinates u [N, 3] (unused: the rule needs only
                the positions and cells, module doc of :mod:`ase_mlff.skin_lists`).
            gradient: the cell filter's deformation F [B, 3, 3], or None without a filter (fixed
                cells, the cheaper rule).
            active: [B] systems evaluated now; atom_mask: [N], their atoms; active_key: names the
                active set.
        """
        self.deforming = gradient is not None
        if self._active is None or self._active[0] != active_key:
            systems = torch.nonzero(active).squeeze(1)
            if self._active is not None:
                before = self._active[1]
                if bool((active & ~before).any()):  # a system came back: no list of it is kept
                    self.reset()
                else:
                    self.select(torch.nonzero(active[before]).squeeze(1))
            remap = torch.cumsum(active.long(), 0) - 1
            self._active = (active_key, active.clone(), systems, remap[batch.system[atom_mask]])
        _, _, systems, system = self._active
        sub = Batch(positions=batch.positions[atom_mask], numbers=batch.numbers[atom_mask], cell=batch.cell[systems],
                    pbc=batch.pbc[systems], system=system, n_atoms=batch.n_atoms[systems])
        return super().__call__(sub)
