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

W(r_ij) depends on |r_ij| only, so from ``PAIRWISE_MIN_EDGES`` edges on it is
evaluated once per pair (``half_edges``) and the message sent both ways, j → i
along r̂_ij and i → j along r̂_ji = −r̂_ij (as SchNet does; it needs the full,
symmetric lists of :mod:`ase_mlff.neighbors`). A float32 force call then takes
0.74× the time on 192 waters (10,000 edges), 0.81× on 64 ethanols (4,608) and
0.87× on 16 (1,152), one quiet thread; on 8 ethanols (576 edges) 0.96×, on one
(72) 1.13×, so small graphs keep a filter per directed edge.

silu may be replaced by another ``activation``, the sine basis by Gaussians;
these options cover the variants SchNetPack 2 trains (see :mod:`ase_mlff.spk`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Potential
from .layers import cosine_cutoff, get_activation, mlp, one_edge_per_pair, radial_basis

#: edges from which filters are evaluated once per pair and sent both ways (as SchNet's;
#: measured crossover: module doc)
PAIRWISE_MIN_EDGES = 1024
#: a large CPU batch is evaluated in pieces of about this many edges per thread (measured:
#: ase_mlff.forces.pieces); at least 2 × PAIRWISE_MIN_EDGES, so that every piece stays pair-wise
PIECE_EDGES_PER_THREAD = 2048


class _Block(nn.Module):
    def __init__(self, n_features: int, activation: type[nn.Module]):
        super().__init__()
        self.context = mlp(n_features, n_features, 3 * n_features, activation)
        self.mix = nn.Linear(n_features, 2 * n_features, bias=False)
        self.gates = mlp(2 * n_features, n_features, 3 * n_features, activation)


class PaiNN(Potential):
    """PaiNN potential.

    Args:
        species: elements covered, e.g. ``["H", "C", "O"]``.
        cutoff: Å.
        n_features: width of scalar and vector features.
        n_interactions: number of message + update blocks.
        n_rbf: number of radial functions.
        activation: in context and gate networks, a name in ``layers.ACTIVATIONS``.
        rbf: radial basis, "bessel" (sines) or "gaussian" (on [0, cutoff]).
        rbf_width: Å, width of the Gaussians; None: their spacing.
        readout_hidden: hidden widths of the readout; None: [n_features // 2].
        readout_activation: between the readout's layers.
        epsilon: added to ‖V v_i‖² so that its gradient stays finite at 0.
    """

    architecture = "painn"
    pairwise_min_edges = PAIRWISE_MIN_EDGES
    piece_edges_per_thread = PIECE_EDGES_PER_THREAD
    #: options added after the first five, with the defaults that give the original network
    _OPTIONS = dict(activation="silu", rbf="bessel", rbf_width=None, readout_hidden=None,
                    readout_activation="silu", epsilon=1e-8)

    def __init__(self, species: Sequence[str | int], cutoff: float = 5.0, n_features: int = 128,
                 n_interactions: int = 3, n_rbf: int = 20, activation: str = "silu",
                 rbf: str = "bessel", rbf_width: float | None = None,
                 readout_hidden: Sequence[int] | None = None, readout_activation: str = "silu",
                 epsilon: float = 1e-8):
        super().__init__(species, cutoff)
        self.n_features, self.n_interactions, self.n_rbf = n_features, n_interactions, n_rbf
        self.activation, self.rbf_name, self.rbf_width = activation, rbf, rbf_width
        self.readout_activation, self.epsilon = readout_activation, float(epsilon)
        self.readout_hidden = None if readout_hidden is None else [int(n) for n in readout_hidden]
        self.embedding = nn.Embedding(len(self.species), n_features)
        self.rbf = radial_basis(rbf, n_rbf, cutoff, rbf_width)
        self.filters = nn.Linear(n_rbf, n_interactions * 3 * n_features)
        self.blocks = nn.ModuleList(_Block(n_features, get_activation(activation)) for _ in range(n_interactions))
        hidden = [n_features // 2] if readout_hidden is None else self.readout_hidden
        self.readout = mlp(n_features, hidden, 1, get_activation(readout_activation))

    def hyperparameters(self) -> dict:
        options = dict(activation=self.activation, rbf=self.rbf_name, rbf_width=self.rbf_width,
                       readout_hidden=self.readout_hidden, readout_activation=self.readout_activation,
                       epsilon=self.epsilon)
        return dict(species=self.species, cutoff=self.cutoff, n_features=self.n_features,
                    n_interactions=self.n_interactions, n_rbf=self.n_rbf,
                    **{k: v for k, v in options.items() if v != self._OPTIONS[k]})

    def atomic_outputs(self, species, edge_index, edge_vectors):
        both_ways = self.pairwise(edge_index.shape[1])  # then P edges: one per pair, else all E
        if both_ways:
            edge_index, edge_vectors = one_edge_per_pair(edge_index, edge_vectors)
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
            # message: neighbors' scalars and vectors, filtered by distance (j -> i)
            context = block.context(s)  # [N, 3F]
            phi_s, phi_vv, phi_vs = torch.split(context[j] * w, F, dim=1)  # [E, F] each
            ds = torch.zeros_like(s).index_add_(0, i, phi_s)
            dv = torch.zeros_like(v).index_add_(0, i, phi_vv.unsqueeze(1) * v[j] + phi_vs.unsqueeze(1) * directions)
            if both_ways:  # the same pair's filter, i -> j, along r̂_ji = −r̂_ij
                phi_s, phi_vv, phi_vs = torch.split(context[i] * w, F, dim=1)
                ds.index_add_(0, j, phi_s)
                dv.index_add_(0, j, phi_vv.unsqueeze(1) * v[i] - phi_vs.unsqueeze(1) * directions)
            s, v = s + ds, v + dv
            # update: couple scalars and vectors within each atom
            u_v, v_v = torch.split(block.mix(v), F, dim=2)  # [N, 3, F] each
            v_norm = torch.sqrt(v_v.square().sum(1) + self.epsilon)  # eps keeps the gradient finite at 0
            a_vv, a_sv, a_ss = torch.split(block.gates(torch.cat([s, v_norm], dim=1)), F, dim=1)
            v = v + a_vv.unsqueeze(1) * u_v
            s = s + a_sv * (u_v * v_v).sum(1) + a_ss
        return self.readout(s).squeeze(1)
