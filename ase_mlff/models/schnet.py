"""SchNet: continuous-filter convolutions (Schütt et al., J. Chem. Phys. 148, 241722 (2018)).

| equation                                              | code                                 |
|-------------------------------------------------------|--------------------------------------|
| x_i⁰ = embedding(Z_i)                                 | ``self.embedding``                   |
| e_k(r_ij) = exp(-γ(r_ij - μ_k)²)                      | ``GaussianRBF``                      |
| W^t(r_ij) = Dense(ssp(Dense(e(r_ij)))) · f_cut(r_ij)  | ``filters`` (first layers stored as one)|
| m_i = Σ_j (Dense_in(x_j) ⊙ W^t(r_ij))                 | ``index_add_`` over edges, both ways |
| x_i ← x_i + Dense(ssp(Dense(m_i)))                    | ``block.update``                     |
| y_i = Dense(ssp(Dense(x_i)))                          | ``self.readout``                     |

W^t depends on |r_ij| only, so on large systems it is evaluated once per pair
(``half_edges``) and the message sent both ways: 0.63× the time of one filter
per directed edge on 1,536 waters, 0.75× on 192 (a force call, one thread). It
needs the full, symmetric edge lists that :mod:`ase_mlff.neighbors` builds.
Below ``PAIRWISE_MIN_EDGES`` edges the few extra operations cost more than the
arithmetic saved (ethanol, 72 edges: 1.08× the time), and every directed edge
gets its filter.

ssp may be replaced by another ``activation``; the options beyond the first
five cover the variants SchNetPack 2 trains (see :mod:`ase_mlff.spk`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import Potential
from .layers import cosine_cutoff, get_activation, mlp, one_edge_per_pair, radial_basis

#: edges from which filters are evaluated once per pair (measured crossover: module doc)
PAIRWISE_MIN_EDGES = 1024
#: a large CPU batch is evaluated in pieces of about this many edges per thread (see PaiNN's)
PIECE_EDGES_PER_THREAD = 2048


class _Interaction(nn.Module):
    def __init__(self, n_features: int, n_filters: int, activation: type[nn.Module]):
        super().__init__()
        self.to_messages = nn.Linear(n_features, n_filters, bias=False)
        self.update = mlp(n_filters, n_features, n_features, activation)


class SchNet(Potential):
    """SchNet potential.

    Args:
        species: elements covered, e.g. ``["H", "C", "O"]``.
        cutoff: Å.
        n_features: width of atom features and filters.
        n_interactions: number of interaction blocks.
        n_rbf: number of radial functions.
        n_filters: width of the filters; None: n_features.
        activation: in filters and updates, a name in ``layers.ACTIVATIONS``.
        rbf: radial basis, "gaussian" (on [0, cutoff]) or "bessel".
        rbf_width: Å, width of the Gaussians; None: their spacing.
        readout_hidden: hidden widths of the readout; None: [n_features // 2].
        readout_activation: between the readout's layers.
    """

    architecture = "schnet"
    pairwise_min_edges = PAIRWISE_MIN_EDGES
    piece_edges_per_thread = PIECE_EDGES_PER_THREAD
    #: options added after the first five, with the defaults that give the original network
    _OPTIONS = dict(n_filters=None, activation="ssp", rbf="gaussian", rbf_width=None,
                    readout_hidden=None, readout_activation="ssp")

    def __init__(self, species: Sequence[str | int], cutoff: float = 5.0, n_features: int = 64,
                 n_interactions: int = 3, n_rbf: int = 20, n_filters: int | None = None,
                 activation: str = "ssp", rbf: str = "gaussian", rbf_width: float | None = None,
                 readout_hidden: Sequence[int] | None = None, readout_activation: str = "ssp"):
        super().__init__(species, cutoff)
        self.n_features, self.n_interactions, self.n_rbf = n_features, n_interactions, n_rbf
        self.n_filters, self.activation, self.rbf_name = n_filters, activation, rbf
        self.rbf_width, self.readout_activation = rbf_width, readout_activation
        self.readout_hidden = None if readout_hidden is None else [int(n) for n in readout_hidden]
        n_filters = n_features if n_filters is None else n_filters
        act = get_activation(activation)
        self.embedding = nn.Embedding(len(self.species), n_features)
        self.rbf = radial_basis(rbf, n_rbf, cutoff, rbf_width)
        self.filter_activation = act()
        # the first filter layer of every block, stored as one Linear (the model-file layout)
        self.filter_in = nn.Linear(n_rbf, n_interactions * n_filters)
        self.filter_out = nn.ModuleList(nn.Linear(n_filters, n_filters) for _ in range(n_interactions))
        self.blocks = nn.ModuleList(_Interaction(n_features, n_filters, act) for _ in range(n_interactions))
        hidden = [n_features // 2] if readout_hidden is None else self.readout_hidden
        self.readout = mlp(n_features, hidden, 1, get_activation(readout_activation))

    def hyperparameters(self) -> dict:
        options = dict(n_filters=self.n_filters, activation=self.activation, rbf=self.rbf_name,
                       rbf_width=self.rbf_width, readout_hidden=self.readout_hidden,
                       readout_activation=self.readout_activation)
        return dict(species=self.species, cutoff=self.cutoff, n_features=self.n_features,
                    n_interactions=self.n_interactions, n_rbf=self.n_rbf,
                    **{k: v for k, v in options.items() if v != self._OPTIONS[k]})

    def atomic_outputs(self, species, edge_index, edge_vectors):
        both_ways = self.pairwise(edge_index.shape[1])  # then P edges: one per pair, else all E
        if both_ways:
            edge_index, edge_vectors = one_edge_per_pair(edge_index, edge_vectors)
        i, j = edge_index
        distances = torch.linalg.vector_norm(edge_vectors, dim=1)  # [P], Å
        envelope = cosine_cutoff(distances, self.cutoff).unsqueeze(1)  # [P, 1]
        rbf = self.rbf(distances)  # [P, n_rbf]
        # the first filter layers of all blocks are stored as one Linear, but applied block by
        # block: slices of one wide [P, n·F] output are strided, and their activations and
        # gradients cost more than the matmuls saved (10 % of a water step measured)
        weight, bias = self.filter_in.weight, self.filter_in.bias
        width = weight.shape[0] // self.n_interactions
        x = self.embedding(species)  # [N, F]
        for t, (block, out_t) in enumerate(zip(self.blocks, self.filter_out)):
            rows = slice(t * width, (t + 1) * width)
            hidden_t = nn.functional.linear(rbf, weight[rows], bias[rows])  # [P, n_filters]
            filters = out_t(self.filter_activation(hidden_t)) * envelope  # [P, n_filters]
            h = block.to_messages(x)  # [N, F]
            aggregated = h.new_zeros(h.shape).index_add_(0, i, h[j] * filters)
            if both_ways:
                aggregated.index_add_(0, j, h[i] * filters)
            x = x + block.update(aggregated)
        return self.readout(x).squeeze(1)
