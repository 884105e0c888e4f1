"""Counter-based random numbers: noise that belongs to a system, not to a batch.

Thermostat noise for system b at step n is a pure function of
(seed_b, n, stream, index of the atom within b). Hence

* a system gets the same noise whether it runs alone or in a batch of 512,
  in whatever order, on the CPU or a GPU (integer arithmetic is exact);
* a restart needs no generator state: the step count is the state;
* no Python loop over systems and no device-to-host traffic per step.

The generator is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014; the seeding
generator of Java's SplittableRandom and of xoshiro), which passes BigCrush:
output k of a stream with key x is ``mix(x + (k+1)·γ)``, γ = 2⁶⁴/φ. The key
of (seed, step, stream) is itself a ``mix`` of them. Gaussians come from
Box-Muller on two 53-bit uniforms.

======================================  ==========================================
equation                                code
======================================  ==========================================
z ← (z ⊕ (z ≫ 30))·0xbf58476d1ce4e5b9   ``_mix``: wrapping int64 products, logical
z ← (z ⊕ (z ≫ 27))·0x94d049bb133111eb   shifts emulated with a mask (torch's ``>>``
z ← z ⊕ (z ≫ 31)                        is arithmetic on int64)
u = (z ≫ 11)·2⁻⁵³ ∈ [0, 1)              ``_uniform``
ξ = √(−2 ln(1−u₁)) cos(2π u₂)           ``gaussian``
======================================  ==========================================
"""

from __future__ import annotations

import math

import torch

_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

#: noise streams (one per use, so that no two uses ever share numbers)
VELOCITIES, LANGEVIN, BUSSI_FIRST, BUSSI_SECOND, BAROSTAT = 1, 2, 3, 4, 5


def _signed(value: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA_S, _M1_S, _M2_S = _signed(_GAMMA), _signed(_M1), _signed(_M2)


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _srl(z, 30)) * _M1_S
    z = (z ^ _srl(z, 27)) * _M2_S
    return z ^ _srl(z, 31)


def stream_keys(seeds: torch.Tensor, step: int, stream: int) -> torch.Tensor:
    """[B] int64 keys of the streams (seed_b, step, stream)."""
    z = _mix(seeds + _signed((step * 0x632BE59BD9B4E019 + stream * 0x8CB92BA72F3D8DD7) & ((1 << 64) - 1)))
    return _mix(z ^ _signed(0xD6E8FEB86659FD93))


def _uniform(keys: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Uniform float64 in [0, 1): output ``counter`` of the streams ``keys`` (same shape)."""
    z = _mix(keys + (counter + 1) * _GAMMA_S)
    return _srl(z, 11).to(torch.float64) * (1.0 / (1 << 53))


def gaussian(seeds: torch.Tensor, owner: torch.Tensor, local: torch.Tensor, step: int,
             stream: int) -> torch.Tensor:
    """Standard normal numbers, one per element of ``owner``.

    Args:
        seeds: [B] int64 seed of each system.
        owner: [M] int64, the system each number belongs to.
        local: [M] int64, the number's index within its system (e.g. 3·atom + axis).
        step, stream: which draw of the system this is.

    Returns:
        [M] float64.
    """
    keys = stream_keys(seeds, step, stream)[owner]
    u1 = _uniform(keys, 2 * local)
    u2 = _uniform(keys, 2 * local + 1)
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * math.pi) * u2)


def system_seeds(seed: int, n_systems: int) -> list[int]:
    """Independent 63-bit seeds for the systems of a run seeded with ``seed``.

    System k's seed depends on (seed, k) only, so replica k of a run has the
    same noise whatever the number of replicas.
    """
    index = torch.arange(n_systems, dtype=torch.int64)
    keys = _mix(_mix(torch.full_like(index, _signed(seed))) + (index + 1) * _GAMMA_S)
    return (keys & ((1 << 63) - 1)).tolist()
