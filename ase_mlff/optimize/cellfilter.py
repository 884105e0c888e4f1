"""The Fréchet cell filter, batched: positions and cell as one set of coordinates for an optimizer.

As ASE's ``FrechetCellFilter`` (``ase/filters.py``, after JuLIP's ``expcell``):
a system's coordinates are its atoms' positions in the *undeformed* cell and
the matrix logarithm of the deformation gradient F, scaled by c (default: the
number of atoms):

    cell   = cell₀ Fᵀ                          F = exp(X / c)
    r_i    = u_i Fᵀ                            (u: positions in cell₀ coordinates, [n, 3] Å)
    W      = −V (σ + p I)                      virial under the scalar pressure p, eV
    G_u,i  = F_i · F          (row vector)     "force" on u_i, eV/Å
    G_X    = L(Xᵀ/c, W F⁻ᵀ) / c                "force" on X, eV (per c)

where L(A, E) is the Fréchet derivative of the matrix exponential at A in the
direction E. ASE contracts L(X/c, E_μν) with W F⁻ᵀ for each of the nine unit
directions E_μν; the adjoint identity ⟨L(A, E), G⟩ = ⟨E, L(Aᵀ, G)⟩ gives all
nine at once, and L itself is the upper-right block of exp([[A, G], [0, A]])
(Higham, *Functions of Matrices*, 2008, eq. 10.15). The cell₀ is the starting
cell, so X starts at zero and no matrix logarithm is ever needed (ASE takes
logm(F) of the current cell on every step, which returns the same X).

| equation | code |
|---|---|
| F = exp(X / c) | :func:`deformation` |
| r = u Fᵀ, cell = cell₀ Fᵀ | :func:`deformed` |
| W = −V(σ + pI), G_u = F·F, G_X = L(Xᵀ/c, W F⁻ᵀ)/c | :func:`filter_forces` |
| L(A, E) | :func:`expm_frechet` |

The convergence criterion is ASE's ``fmax`` on the filter: the largest row
norm of [G_u; G_X] below ``fmax`` (:func:`largest_row_norm`).
"""

from __future__ import annotations

import torch


def expm_frechet(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Fréchet derivative L(A, E) of the matrix exponential, [B, n, n] for [B, n, n] inputs.

    The upper-right block of exp([[A, E], [0, A]]).
    """
    n = a.shape[-1]
    block = a.new_zeros(a.shape[:-2] + (2 * n, 2 * n))
    block[..., :n, :n] = a
    block[..., n:, n:] = a
    block[..., :n, n:] = e
    return torch.linalg.matrix_exp(block)[..., :n, n:]


def deformation(log_strain: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """F = exp(X / c): [B, 3, 3] from X [B, 3, 3] and c [B]."""
    return torch.linalg.matrix_exp(log_strain / factor.view(-1, 1, 1))


def deformed(reference_positions: torch.Tensor, reference_cell: torch.Tensor, gradient: torch.Tensor,
             system: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [N, 3] Å, cell [B, 3, 3] Å) = (u Fᵀ, cell₀ Fᵀ) per system."""
    positions = torch.einsum("ni,nji->nj", reference_positions, gradient[system])
    cell = torch.bmm(reference_cell, gradient.transpose(1, 2))
    return positions, cell


def filter_forces(forces: torch.Tensor, stress: torch.Tensor, cell: torch.Tensor, log_strain: torch.Tensor,
                  factor: torch.Tensor, gradient: torch.Tensor, system: torch.Tensor,
                  pressure: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised forces on (u, X).

    Args:
        forces: [N, 3] eV/Å, Cartesian. stress: [B, 3, 3] eV/Å³ (ASE sign). cell: [B, 3, 3] Å.
        log_strain: X [B, 3, 3]; factor: c [B]; gradient: F = exp(X/c) [B, 3, 3].
        system: [N] system of each atom. pressure: eV/Å³.

    Returns:
        (G_u [N, 3] eV/Å, G_X [B, 3, 3] eV).
    """
    volume = torch.linalg.det(cell).abs().view(-1, 1, 1)
    eye = torch.eye(3, dtype=stress.dtype, device=stress.device)
    virial = -volume * (stress + pressure * eye)  # [B, 3, 3], eV
    cell_gradient = virial @ torch.linalg.inv(gradient).transpose(1, 2)  # UnitCellFilter's, eV
    c = factor.view(-1, 1, 1)
    on_log = expm_frechet((log_strain / c).transpose(1, 2), cell_gradient) / c
    on_positions = torch.einsum("ni,nij->nj", forces, gradient[system])
    return on_positions, on_log


def largest_row_norm(rows: torch.Tensor, row_system: torch.Tensor, n_systems: int) -> torch.Tensor:
    """max over a system's rows of |row|: [B] from rows [R, 3] and their systems [R]."""
    norms = torch.linalg.vector_norm(rows, dim=1)
    out = norms.new_zeros(n_systems)
    return out.scatter_reduce_(0, row_system, norms, "amax", include_self=True)
