"""Building blocks shared by the networks: cutoffs, radial bases, activations."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_cutoff(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """f(r) = ½(cos(πr/r_c) + 1) for r < r_c, else 0 (Behler 2011).

    Smooth to first order at r_c: energy and forces go continuously to zero.
    """
    value = 0.5 * (torch.cos(distances * (math.pi / cutoff)) + 1.0)
    return value * (distances < cutoff).to(distances.dtype)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """ssp(x) = ln(½eˣ + ½), the SchNet activation (zero at x = 0)."""
    return nn.functional.softplus(x) - math.log(2.0)


class ShiftedSoftplus(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_softplus(x)


class GaussianRBF(nn.Module):
    """exp(-γ(r - μ_k)²), μ_k evenly spaced on [0, r_c], γ = 1/(2Δμ²) (SchNet)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        centers = torch.linspace(0.0, cutoff, n_rbf, dtype=torch.float64)
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


def mlp(n_in: int, n_hidden: int, n_out: int, activation: type[nn.Module]) -> nn.Sequential:
    """Two dense layers with one activation between them."""
    return nn.Sequential(nn.Linear(n_in, n_hidden), activation(), nn.Linear(n_hidden, n_out))
