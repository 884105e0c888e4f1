"""SchNet: continuous-filter convolutions (Schütt et al., J. Chem. Phys. 148, 241722 (2018)).

| equation                                              | code                                 |
|-------------------------------------------------------|--------------------------------------|
| x_i⁰ = embedding(Z_i)                                 | ``self.embedding``                   |
| e_k(r_ij) = exp(-γ(r_ij - μ_k)²)                      | ``GaussianRBF``                      |
| W^t(r_ij) = Dense(ssp(Dense(e(r_ij)))) · f_cut(r_ij)  | ``filters`` (all blocks in one layer)|
| m_i = Σ_j (Dense_in(x_j) ⊙ W^t(r_ij))                 | ``index_add_`` over edges            |
| x_i ← x_i + Dense(ssp(Dense(m_i)))                    | ``block.update``                     |
| y_i = Dense(ssp(Dense(x_i)))                          | ``self.readout``                     |
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Potential
from .layers import GaussianRBF, ShiftedSoftplus, cosine_cutoff, mlp


class _Interaction(nn.Module):
    def __init__(self, n_features: int):
        super().__init__()
        self.to_messages = nn.Linear(n_features, n_features, bias=False)
        self.update = mlp(n_features, n_features, n_features, ShiftedSoftplus)


class SchNet(Potential):
    """SchNet potential.

    Args:
        species: elements covered, e.g. ``["H", "C", "O"]``.
        cutoff: Å.
        n_features: width of atom features and filters.
        n_interactions: number of interaction blocks.
        n_rbf: number of Gaussians on [0, cutoff].
    """

    architecture = "schnet"

    def __init__(self, species: Sequence[str | int], cutoff: float = 5.0, n_features: int = 64,
                 n_interactions: int = 3, n_rbf: int = 20):
        super().__init__(species, cutoff)
        self.n_features, self.n_interactions, self.n_rbf = n_features, n_interactions, n_rbf
        self.embedding = nn.Embedding(len(self.species), n_features)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        # first filter layer of every block at once: one matmul instead of n
        self.filter_in = nn.Linear(n_rbf, n_interactions * n_features)
        self.filter_out = nn.ModuleList(nn.Linear(n_features, n_features) for _ in range(n_interactions))
        self.blocks = nn.ModuleList(_Interaction(n_features) for _ in range(n_interactions))
        self.readout = mlp(n_features, n_features // 2, 1, ShiftedSoftplus)

    def hyperparameters(self) -> dict:
        return dict(species=self.species, cutoff=self.cutoff, n_features=self.n_features,
                    n_interactions=self.n_interactions, n_rbf=self.n_rbf)

    def atomic_outputs(self, species, edge_index, edge_vectors):
        i, j = edge_index
        distances = torch.linalg.vector_norm(edge_vectors, dim=1)  # [E], Å
        envelope = cosine_cutoff(distances, self.cutoff).unsqueeze(1)  # [E, 1]
        rbf = self.rbf(distances)  # [E, n_rbf]
        hidden = torch.chunk(self.filter_in(rbf), self.n_interactions, dim=1)
        x = self.embedding(species)  # [N, F]
        for block, hidden_t, out_t in zip(self.blocks, hidden, self.filter_out):
            filters = out_t(nn.functional.softplus(hidden_t) - 0.6931471805599453) * envelope
            messages = block.to_messages(x)[j] * filters  # [E, F]
            aggregated = torch.zeros_like(x).index_add_(0, i, messages)
            x = x + block.update(aggregated)
        return self.readout(x).squeeze(1)
