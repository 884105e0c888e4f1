"""Initial momenta: Maxwell-Boltzmann per system, without drift or rotation.

For each system, momenta p_i = √(m_i k_B T) ξ_i with ξ from the system's own
noise stream (:mod:`.noise`), then

=========================================  =======================================
step                                       code
=========================================  =======================================
P = Σ p_i = 0 (no fixed atoms, N > 1)      ``_remove_drift``
L = Σ (r_i − R)×p_i = 0 (molecules, N > 2, ``_remove_rotation``: ω = I⁻¹L,
non-linear: smallest moment > 1e-8)        p_i −= m_i ω×(r_i − R)
E_kin = n_dof k_B T / 2 exactly            ``scale``
=========================================  =======================================

Exact scaling matters: a 9-atom sample would otherwise start anywhere within
±25 % of the temperature asked for.
"""

from __future__ import annotations

import torch

from .. import units
from . import noise
from .state import MDState, count_dof, kinetic_energy


def _segment_sum(values: torch.Tensor, system: torch.Tensor, n_systems: int) -> torch.Tensor:
    return values.new_zeros((n_systems, *values.shape[1:])).index_add_(0, system, values)


def _remove_drift(state: MDState, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = state.masses.unsqueeze(1)
    total = _segment_sum(p, state.system, state.n_systems)
    mass = _segment_sum(state.masses, state.system, state.n_systems).unsqueeze(1)
    velocity = total / mass  # [B, 3] centre-of-mass velocity
    return torch.where(mask[state.system].unsqueeze(1), p - m * velocity[state.system], p)


def _remove_rotation(state: MDState, p: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero angular momentum where ``mask``; returns (p, mask of systems actually treated)."""
    B, sys = state.n_systems, state.system
    m = state.masses.unsqueeze(1)
    mass = _segment_sum(state.masses, sys, B).unsqueeze(1)
    com = _segment_sum(m * state.positions, sys, B) / mass
    r = state.positions - com[sys]  # [N, 3]
    angular = _segment_sum(torch.cross(r, p, dim=1), sys, B)  # [B, 3]
    r2 = r.square().sum(1)
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    inertia_atoms = m.unsqueeze(2) * (r2.view(-1, 1, 1) * eye - r.unsqueeze(2) * r.unsqueeze(1))
    inertia = _segment_sum(inertia_atoms, sys, B)  # [B, 3, 3]
    nonlinear = torch.linalg.eigvalsh(inertia)[:, 0] > 1e-8
    treat = mask & nonlinear
    safe = torch.where(treat.view(-1, 1, 1), inertia, eye.expand_as(inertia))
    omega = torch.linalg.solve(safe, angular.unsqueeze(2)).squeeze(2)  # [B, 3]
    p_new = p - m * torch.cross(omega[sys], r, dim=1)
    return torch.where(treat[sys].unsqueeze(1), p_new, p), treat


def maxwell_boltzmann(state: MDState, temperature_K: torch.Tensor, zero_momentum: bool) -> None:
    """Set ``state.momenta`` and ``state.dof`` for a start at exactly ``temperature_K`` [B].

    Args:
        zero_momentum: remove drift (and, for molecules, rotation) and leave
            those degrees of freedom out of the count; True for integrators
            that conserve momentum (NVE, Bussi, Nosé-Hoover), False for Langevin.
    """
    n = state.positions.shape[0]
    local = state.local_index()
    owner = state.system.repeat_interleave(3)
    xi = noise.gaussian(state.seeds, owner, (3 * local.unsqueeze(1) + torch.arange(3, device=state.device)).reshape(-1),
                        0, noise.VELOCITIES).view(n, 3)
    kT = units.kB * temperature_K[state.system]
    p = torch.sqrt(state.masses * kT).unsqueeze(1) * xi
    p = p * state.free.unsqueeze(1)
    n_free = torch.zeros_like(state.n_atoms).index_add_(0, state.system, state.free.long())
    all_free = n_free == state.n_atoms
    drift = all_free & (state.n_atoms > 1)
    p = _remove_drift(state, p, drift)
    periodic = state.pbc.any(1)
    rotation = drift & ~periodic & (state.n_atoms > 2)
    p, rotated = _remove_rotation(state, p, rotation)
    dof = [count_dof(int(f), int(a), bool(per), zero_momentum, bool(rot))
           for f, a, per, rot in zip(n_free.tolist(), state.n_atoms.tolist(), periodic.tolist(), rotated.tolist())]
    state.dof = torch.tensor(dof, dtype=torch.float64, device=state.device)
    state.momenta = p
    current = kinetic_energy(state)
    target = 0.5 * state.dof * units.kB * temperature_K
    scale = torch.where(current > 0, torch.sqrt(target / current.clamp(min=1e-300)), torch.zeros_like(current))
    state.momenta = p * scale[state.system].unsqueeze(1)
