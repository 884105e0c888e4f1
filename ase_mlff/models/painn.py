"""PaiNN: polarizable atom interaction network (Schütt, Unke, Gastegger, ICML 2021).

Scalar features s_i [N, F] and vector features v_i [N, 3, F]; r̂_ij is the unit
edge vector and W(r_ij) a filter from a sine radial basis times a cosine cutoff.

| equation (paper eq.)                                              | code                      |
|-------------------------------------------------------------------|---------------------------|
| φ_s, φ_vv, φ_vs = split(Dense(silu(Dense(s_j))) ⊙ W(r_ij))        | ``context``, ``filters``  |
| Δs_i = Σ_j φ_s                                          (7)       | ``index_add_``            |
| Δv_i = Σ_j φ_vv ⊙ v_j + φ_vs ⊙ r̂_ij                     (8)       | ``index_add_``            |
| U v_i, V v_i (linear in the feature dimension)                    | ``mix``                   |
| a_vv, a_sv, a_ss = split(Dense(silu(Dense([s_i, ‖V v_i‖]))))      | ``gates``                 |
| Δv_i = a_vv ⊙ U v_i                                     (9)       |                           |
| Δs_i = a_sv ⊙ ⟨U v_i, V v_i⟩ + a_ss                     (10)      |                           |
| y_i = Dense(silu(Dense(s_i)))                                     | ``readout``               |
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Potential
from .layers import BesselRBF, cosine_cutoff, mlp


class _Block(nn.Module):
    def __init__(self, n_features: int):
        super().__init__()
        self.context = mlp(n_features, n_features, 3 * n_features, nn.SiLU)
        self.mix = nn.Linear(n_features, 2 * n_features, bias=False)
        self.gates = mlp(2 * n_features, n_features, 3 * n_features, nn.SiLU)


class PaiNN(Potential):
    """PaiNN potential.

    Args:
        species: elements covered, e.g. ``["H", "C", "O"]``.
        cutoff: Å.
        n_features: width of scalar and vector features.
        n_interactions: number of message + update blocks.
        n_rbf: number of sine radial functions.
    """

    architecture = "painn"

    def __init__(self, species: Sequence[str | int], cutoff: float = 5.0, n_features: int = 128,
                 n_interactions: int = 3, n_rbf: int = 20):
        super().__init__(species, cutoff)
        self.n_features, self.n_interactions, self.n_rbf = n_features, n_interactions, n_rbf
        self.embedding = nn.Embedding(len(self.species), n_features)
        self.rbf = BesselRBF(n_rbf, cutoff)
        self.filters = nn.Linear(n_rbf, n_interactions * 3 * n_features)
        self.blocks = nn.ModuleList(_Block(n_features) for _ in range(n_interactions))
        self.readout = mlp(n_features, n_features // 2, 1, nn.SiLU)

    def hyperparameters(self) -> dict:
        return dict(species=self.species, cutoff=self.cutoff, n_features=self.n_features,
                    n_interactions=self.n_interactions, n_rbf=self.n_rbf)

    def atomic_outputs(self, species, edge_index, edge_vectors):
        i, j = edge_index
        F = self.n_features
        distances = torch.linalg.vector_norm(edge_vectors, dim=1, keepdim=True)  # [E, 1], Å
        directions = (edge_vectors / distances).unsqueeze(2)  # [E, 3, 1]
        envelope = cosine_cutoff(distances, self.cutoff)  # [E, 1]
        filters = torch.chunk(self.filters(self.rbf(distances.squeeze(1))) * envelope,
                              self.n_interactions, dim=1)  # n × [E, 3F]
        s = self.embedding(species)  # [N, F]
        v = s.new_zeros((s.shape[0], 3, F))  # [N, 3, F]
        for block, w in zip(self.blocks, filters):
            # message: neighbors' scalars and vectors, filtered by distance
            phi = block.context(s)[j] * w  # [E, 3F]
            phi_s, phi_vv, phi_vs = torch.split(phi, F, dim=1)
            dv = phi_vv.unsqueeze(1) * v[j] + phi_vs.unsqueeze(1) * directions  # [E, 3, F]
            s = s + torch.zeros_like(s).index_add_(0, i, phi_s)
            v = v + torch.zeros_like(v).index_add_(0, i, dv)
            # update: couple scalars and vectors within each atom
            u_v, v_v = torch.split(block.mix(v), F, dim=2)  # [N, 3, F] each
            v_norm = torch.sqrt(v_v.square().sum(1) + 1e-8)  # eps keeps the gradient finite at 0
            a_vv, a_sv, a_ss = torch.split(block.gates(torch.cat([s, v_norm], dim=1)), F, dim=1)
            v = v + a_vv.unsqueeze(1) * u_v
            s = s + a_sv * (u_v * v_v).sum(1) + a_ss
        return self.readout(s).squeeze(1)
