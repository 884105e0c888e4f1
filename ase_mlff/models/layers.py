"""Building blocks shared by the networks: cutoffs, radial bases, activations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..neighbors import one_per_pair


def cosine_cutoff(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """f(r) = ½(cos(πr/r_c) + 1) for r < r_c, else 0 (Behler 2011).

    Smooth to first order at r_c: energy and forces go continuously to zero.
    """
    value = 0.5 * (torch.cos(distances * (math.pi / cutoff)) + 1.0)
    return value * (distances < cutoff).to(distances.dtype)


def half_edges(edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
    """Mask [E] keeping one edge of every pair (i, j, r) / (j, i, −r) of a full list.

    A full (symmetric) neighbor list holds every pair twice, and a filter that
    depends on |r| only is the same for both: networks evaluate it on the kept
    half and send the message both ways. Kept: i < j, and for an atom's own
    periodic images (i = j) the image whose first non-zero component of r is
    positive. The two edges of a pair have exactly opposite vectors (r_j − r_i
    + S·cell and r_i − r_j − S·cell round alike), so exactly one is kept.
    """
    return one_per_pair(edge_index, edge_vectors)


def one_edge_per_pair(edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges :func:`half_edges` keeps, [2, P] and [P, 3]: one index list and two
    ``index_select`` (boolean indexing would find the kept edges twice, and its backward
    is a masked scatter)."""
    kept = torch.nonzero(half_edges(edge_index, edge_vectors)).squeeze(1)
    return edge_index.index_select(1, kept), edge_vectors.index_select(0, kept)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """ssp(x) = ln(½eˣ + ½), the SchNet activation (zero at x = 0)."""
    return nn.functional.softplus(x) - math.log(2.0)


class ShiftedSoftplus(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_softplus(x)


class GaussianRBF(nn.Module):
    """exp(-γ(r - μ_k)²), μ_k evenly spaced on [0, r_c], γ = 1/(2w²) (SchNet).

    Args:
        width: w in Å; None: the spacing Δμ of the centers. (Imported models
            set it, and their centers arrive with the weights.)
    """

    def __init__(self, n_rbf: int, cutoff: float, width: float | None = None):
        super().__init__()
        centers = torch.linspace(0.0, cutoff, n_rbf, dtype=torch.float64)
        if width is None:
            width = float(centers[1] - centers[0]) if n_rbf > 1 else cutoff
        self.register_buffer("centers", centers)
        self.coefficient = -0.5 / width**2

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coefficient * (distances.unsqueeze(-1) - self.centers).square())


class BesselRBF(nn.Module):
    """sin(kπr/r_c)/r, k = 1..n (PaiNN; Klicpera et al. 2020)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        frequencies = torch.arange(1, n_rbf + 1, dtype=torch.float64) * math.pi / cutoff
        self.register_buffer("frequencies", frequencies)

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        d = distances.unsqueeze(-1)
        # r is never 0 for a real edge; the clamp only keeps padding finite
        return torch.sin(self.frequencies * d) / d.clamp_min(1e-9)


#: activation name (as stored in model files) -> module class
ACTIVATIONS = {"ssp": ShiftedSoftplus, "silu": nn.SiLU, "tanh": nn.Tanh}

#: radial basis name (as stored in model files) -> module class
RADIAL_BASES = {"gaussian": GaussianRBF, "bessel": BesselRBF}


def get_activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid activations: {sorted(ACTIVATIONS)}") from None


def radial_basis(name: str, n_rbf: int, cutoff: float, width: float | None = None) -> nn.Module:
    """The radial basis ``name`` ("gaussian" or "bessel"); ``width`` applies to Gaussians only."""
    if name not in RADIAL_BASES:
        raise ValueError(f"unknown radial basis {name!r}; valid radial bases: {sorted(RADIAL_BASES)}")
    if name == "gaussian":
        return GaussianRBF(n_rbf, cutoff, width)
    if width is not None:
        raise ValueError(f"rbf_width applies to the Gaussian radial basis only, not {name!r}")
    return BesselRBF(n_rbf, cutoff)


def mlp(n_in: int, n_hidden: int | Sequence[int], n_out: int, activation: type[nn.Module]) -> nn.Sequential:
    """Dense layers n_in -> n_hidden... -> n_out with ``activation`` between them (none after the last)."""
    sizes = [n_in, *(n_hidden if isinstance(n_hidden, Sequence) else [n_hidden]), n_out]
    layers: list[nn.Module] = []
    for n_a, n_b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_a, n_b), activation()]
    return nn.Sequential(*layers[:-1])
