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
        half, prune: as :class:`~ase_mlff.skin_lists.BatchedNeighbors`'s (``for_model`` sets them).
    """

    def __init__(self, cutoff: float, skin: float, backend: str = "auto", half: bool = False, prune: bool = True):
        super().__init__(cutoff, skin, backend, deforming=False, half=half, prune=prune)
        self._active: tuple | None = None  # (key, [B] mask) of the active set the lists follow

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
                else:
                    self.select(torch.nonzero(active[before]).squeeze(1))
            self._active = (active_key, active.clone())
        return super().__call__(sub)
