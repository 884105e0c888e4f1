"""Reference physics of Lennard-Jones argon, independent of the package's code.

Nothing here imports ``ase_mlff``: these are the numbers the package is checked
against (``tests/test_lj_verification.py``).

1. The Johnson-Zollweg-Gubbins equation of state of the *full* (untruncated) LJ
   fluid, a modified Benedict-Webb-Rubin form fitted to MD and MC data:
   J. K. Johnson, J. A. Zollweg and K. E. Gubbins, "The Lennard-Jones equation
   of state revisited", Mol. Phys. 78, 591-618 (1993), doi:10.1080/00268979300100411,
   eqs. 5-7 and Table 10. Reduced units throughout: ρ* = ρσ³, T* = k_BT/ε,
   P* = Pσ³/ε.

   ==========================================  ==========================
   equation                                    code
   ==========================================  ==========================
   P = ρT + Σ_{i=1..8} a_i ρ^{i+1}             ``jzg_pressure``
       + F Σ_{i=1..6} b_i ρ^{2i+1}
   F = exp(−γρ²), γ = 3                        ``JZG_GAMMA``
   a_i(T), b_i(T) from x₁…x₃₂ (Table 10)       ``jzg_coefficients``
   ∂P/∂ρ, ∂²P/∂ρ² (analytic)                   ``jzg_dpressure_drho``, ``jzg_d2pressure_drho2``
   κ_T = 1/(ρ ∂P/∂ρ)                           ``jzg_compressibility``
   ==========================================  ==========================

   The 32 parameters were transcribed from Table 10 and checked digit for digit
   against two independent public transcriptions (a C implementation in the
   3ki5tj LJ codes and the MBWR class of a Python DFT package citing Table 10).

2. Long-range (tail) corrections for a spherical cutoff r_c, assuming g(r) = 1
   beyond r_c (Allen & Tildesley, *Computer Simulation of Liquids*, 2nd ed., §2.8):

       P_tail = (16/3)πρ²εσ³ [(2/3)(σ/r_c)⁹ − (σ/r_c)³]
       U_tail/N = (8/3)πρεσ³ [(1/3)(σ/r_c)⁹ − (σ/r_c)³]

3. The LJ pair function exactly as the ``LennardJones`` model defines it (from
   its docstring, not its code): u(r) − u(r_c) (``smooth=False``) or
   u(r)·fc(r²), fc = s²(3 − 2s), s = (r_c² − r²)/(r_c² − r_o²) clipped to [0, 1]
   (``smooth=True``); and the static lattice sum E/N(a) = ½ Σ_{0<|R|<r_c} φ(|R|)
   for fcc, bcc and sc, with its minimum lattice constant.

4. Statistics for MD time series: block averages and the standard error of a
   mean and of a variance.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.integrate import quad
from scipy.optimize import brentq

# -- JZG equation of state ------------------------------------------------------------------
#: x₁…x₃₂ of Johnson, Zollweg & Gubbins (1993), Table 10.
JZG_X = (
    0.8623085097507421, 2.976218765822098, -8.402230115796038, 0.1054136629203555,
    -0.8564583828174598, 1.582759470107601, 0.7639421948305453, 1.753173414312048,
    2.798291772190376e3, -4.8394220260857657e-2, 0.9963265197721935, -3.698000291272493e1,
    2.084012299434647e1, 8.305402124717285e1, -9.574799715203068e2, -1.477746229234994e2,
    6.398607852471505e1, 1.603993673294834e1, 6.805916615864377e1, -2.791293578795945e3,
    -6.245128304568454, -8.116836104958410e3, 1.488735559561229e1, -1.059346754655084e4,
    -1.131607632802822e2, -8.867771540418822e3, -3.986982844450543e1, -4.689270299917261e3,
    2.593535277438717e2, -2.694523589434903e3, -7.218487631550215e2, 1.721802063863269e2,
)
JZG_GAMMA = 3.0

#: Critical point of the JZG equation as its authors quote it (Mol. Phys. 78, 591, §5).
JZG_CRITICAL_POINT = dict(temperature=1.313, density=0.310, pressure=0.13)


def jzg_coefficients(temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """a₁…a₈ and b₁…b₆ of the JZG equation (their Table 5) at reduced temperature T*."""
    x = (None,) + JZG_X  # 1-based, as in the paper
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"reduced temperature must be positive, got {temperature}")
    a = np.array([
        x[1] * t + x[2] * math.sqrt(t) + x[3] + x[4] / t + x[5] / t**2,
        x[6] * t + x[7] + x[8] / t + x[9] / t**2,
        x[10] * t + x[11] + x[12] / t,
        x[13],
        x[14] / t + x[15] / t**2,
        x[16] / t,
        x[17] / t + x[18] / t**2,
        x[19] / t**2,
    ])
    b = np.array([
        x[20] / t**2 + x[21] / t**3,
        x[22] / t**2 + x[23] / t**4,
        x[24] / t**2 + x[25] / t**3,
        x[26] / t**2 + x[27] / t**4,
        x[28] / t**2 + x[29] / t**3,
        x[30] / t**2 + x[31] / t**3 + x[32] / t**4,
    ])
    return a, b


_A_POWERS = np.arange(2, 10)  # ρ^{i+1}, i = 1..8
_B_POWERS = np.arange(3, 14, 2)  # ρ^{2i+1}, i = 1..6


def jzg_pressure(density, temperature: float):
    """P*(ρ*, T*) of the full LJ fluid (JZG eq. 5). ``density`` may be an array."""
    a, b = jzg_coefficients(temperature)
    rho = np.asarray(density, dtype=float)[..., None]
    f = np.exp(-JZG_GAMMA * rho**2)
    p = rho[..., 0] * temperature + (a * rho**_A_POWERS).sum(-1) + f[..., 0] * (b * rho**_B_POWERS).sum(-1)
    return p if p.ndim else float(p)


def jzg_dpressure_drho(density, temperature: float):
    """∂P*/∂ρ* at constant T* (analytic derivative of eq. 5)."""
    a, b = jzg_coefficients(temperature)
    rho = np.asarray(density, dtype=float)[..., None]
    f = np.exp(-JZG_GAMMA * rho**2)
    # d/dρ [F ρ^n] = F (n ρ^{n−1} − 2γ ρ^{n+1})
    fb = (b * (_B_POWERS * rho**(_B_POWERS - 1) - 2 * JZG_GAMMA * rho**(_B_POWERS + 1))).sum(-1)
    d = temperature + (a * _A_POWERS * rho**(_A_POWERS - 1)).sum(-1) + f[..., 0] * fb
    return d if d.ndim else float(d)


def jzg_d2pressure_drho2(density, temperature: float):
    """∂²P*/∂ρ*² at constant T*."""
    a, b = jzg_coefficients(temperature)
    rho = np.asarray(density, dtype=float)[..., None]
    f = np.exp(-JZG_GAMMA * rho**2)
    n, g = _B_POWERS, JZG_GAMMA
    # d²/dρ² [F ρ^n] = F [n(n−1)ρ^{n−2} − 2γ(2n+1)ρ^n + 4γ²ρ^{n+2}]
    fb = (b * (n * (n - 1) * rho**(n - 2) - 2 * g * (2 * n + 1) * rho**n + 4 * g**2 * rho**(n + 2))).sum(-1)
    m = _A_POWERS
    d = (a * m * (m - 1) * rho**(m - 2)).sum(-1) + f[..., 0] * fb
    return d if d.ndim else float(d)


def jzg_compressibility(density: float, temperature: float) -> float:
    """Isothermal compressibility κ_T* = 1/(ρ* ∂P*/∂ρ*), in units of σ³/ε."""
    return 1.0 / (density * jzg_dpressure_drho(density, temperature))


def jzg_density(pressure: float, temperature: float, cutoff: float | None = None,
                bracket: tuple[float, float] = (1e-6, 1.2)) -> float:
    """ρ* of the fluid at (P*, T*), on a supercritical isotherm (one root).

    With ``cutoff`` (r_c/σ) the density is that of the fluid *truncated* at r_c
    (shifted or not: the shift changes no force) held at P*: the root of
    P_JZG(ρ) = P* + P_tail(ρ), see ``tests/test_lj_verification.py`` for why.
    """
    if temperature <= JZG_CRITICAL_POINT["temperature"]:
        raise ValueError(f"jzg_density needs a supercritical isotherm (T* > 1.313), got T* = {temperature}")

    def residual(rho):
        tail = 0.0 if cutoff is None else tail_pressure(rho, cutoff)
        return jzg_pressure(rho, temperature) - pressure - tail

    return brentq(residual, *bracket, xtol=1e-14, rtol=1e-13)


def jzg_critical_point(guess=(0.31, 1.31)) -> tuple[float, float, float]:
    """(ρc*, Tc*, Pc*) where ∂P/∂ρ = ∂²P/∂ρ² = 0, by Newton iteration on both."""
    x = np.array(guess, dtype=float)
    for _ in range(50):
        f = np.array([jzg_dpressure_drho(*x), jzg_d2pressure_drho2(*x)])
        h = 1e-6
        jac = np.empty((2, 2))
        for k in range(2):
            dx = np.zeros(2)
            dx[k] = h
            jac[:, k] = (np.array([jzg_dpressure_drho(*(x + dx)), jzg_d2pressure_drho2(*(x + dx))])
                         - np.array([jzg_dpressure_drho(*(x - dx)), jzg_d2pressure_drho2(*(x - dx))])) / (2 * h)
        step = np.linalg.solve(jac, f)
        x -= step
        if np.abs(step).max() < 1e-13:
            break
    else:
        raise RuntimeError(f"critical point iteration did not converge from {guess}")
    rho, t = x
    return float(rho), float(t), float(jzg_pressure(rho, t))


# -- full LJ pair potential, second virial coefficient, tail corrections --------------------
def lj_energy(r, epsilon: float = 1.0, sigma: float = 1.0):
    """u(r) = 4ε[(σ/r)¹² − (σ/r)⁶], untruncated."""
    c6 = (sigma / np.asarray(r, dtype=float)) ** 6
    return 4.0 * epsilon * (c6 * c6 - c6)


def lj_derivative(r, epsilon: float = 1.0, sigma: float = 1.0):
    """du/dr of the untruncated potential."""
    r = np.asarray(r, dtype=float)
    c6 = (sigma / r) ** 6
    return -24.0 * epsilon * (2.0 * c6 * c6 - c6) / r


def second_virial(temperature: float) -> float:
    """B₂*(T*) = −2π ∫₀^∞ (e^{−u/T} − 1) r² dr of the full LJ potential, by quadrature."""
    def integrand(r):
        return (math.expm1(-lj_energy(r) / temperature)) * r * r

    # the Boltzmann factor vanishes below ~0.5σ at any T* of interest; split at the
    # minimum for the quadrature's sake
    inner = quad(integrand, 1e-3, 2 ** (1 / 6), limit=200, epsabs=1e-13)[0]
    outer = quad(integrand, 2 ** (1 / 6), np.inf, limit=200, epsabs=1e-13)[0]
    return -2.0 * math.pi * (inner + outer)


def tail_pressure(density, cutoff: float, epsilon: float = 1.0, sigma: float = 1.0):
    """P_tail = −(2π/3)ρ² ∫_{r_c}^∞ r³ u'(r) dr = (16/3)πρ²εσ³[(2/3)(σ/r_c)⁹ − (σ/r_c)³].

    ``density`` in 1/length³ of ``sigma``'s unit (reduced with the defaults); the
    result in ε/length³.
    """
    q = sigma / cutoff
    return 16.0 / 3.0 * math.pi * np.asarray(density) ** 2 * epsilon * sigma**3 * (2.0 / 3.0 * q**9 - q**3)


def tail_energy_per_atom(density, cutoff: float, epsilon: float = 1.0, sigma: float = 1.0):
    """U_tail/N = 2πρ ∫_{r_c}^∞ r² u(r) dr = (8/3)πρεσ³[(1/3)(σ/r_c)⁹ − (σ/r_c)³]."""
    q = sigma / cutoff
    return 8.0 / 3.0 * math.pi * np.asarray(density) * epsilon * sigma**3 * (q**9 / 3.0 - q**3)


# -- the model's pair function and lattice sums ---------------------------------------------
def model_pair(r, epsilon: float, sigma: float, cutoff: float, onset: float | None = None,
               smooth: bool = True):
    """(φ(r), φ'(r)) of the ``LennardJones`` model's pair energy, zero beyond ``cutoff``.

    smooth=False: φ = u(r) − u(r_c); smooth=True: φ = u(r)·fc, fc = s²(3 − 2s),
    s = clip((r_c² − r²)/(r_c² − r_o²), 0, 1), r_o = ``onset`` (default 0.66 r_c).
    """
    r = np.asarray(r, dtype=float)
    onset = 0.66 * cutoff if onset is None else onset
    u, du = lj_energy(r, epsilon, sigma), lj_derivative(r, epsilon, sigma)
    inside = r < cutoff
    if smooth:
        s_raw = (cutoff**2 - r**2) / (cutoff**2 - onset**2)
        s = np.clip(s_raw, 0.0, 1.0)
        fc = s * s * (3.0 - 2.0 * s)
        dfc_ds = 6.0 * s * (1.0 - s)
        ds_dr = np.where((s_raw > 0) & (s_raw < 1), -2.0 * r / (cutoff**2 - onset**2), 0.0)
        phi, dphi = u * fc, du * fc + u * dfc_ds * ds_dr
    else:
        phi, dphi = u - lj_energy(cutoff, epsilon, sigma), du
    return np.where(inside, phi, 0.0), np.where(inside, dphi, 0.0)


#: Lattice points of the conventional cubic cells in units of the lattice constant.
_BASES = {
    "sc": np.array([[0.0, 0.0, 0.0]]),
    "bcc": np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]),
    "fcc": np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]),
}


def atoms_per_cell(lattice: str) -> int:
    """Lattice points in the conventional cubic cell (sc 1, bcc 2, fcc 4)."""
    if lattice not in _BASES:
        raise ValueError(f"lattice must be one of {sorted(_BASES)}, got {lattice!r}")
    return len(_BASES[lattice])


def lattice_vectors(lattice: str, a: float, radius: float) -> np.ndarray:
    """Lattice vectors R [n, 3] with 0 < |R| < ``radius`` of a cubic Bravais lattice (float64)."""
    atoms_per_cell(lattice)  # checks the name
    n = int(math.ceil(radius / a)) + 1
    cells = np.array(list(itertools.product(range(-n, n + 1), repeat=3)), dtype=float)
    points = (cells[:, None, :] + _BASES[lattice][None, :, :]).reshape(-1, 3) * a
    r = np.sqrt((points**2).sum(1))
    return points[(r > 0) & (r < radius)]


def lattice_distances(lattice: str, a: float, cutoff: float) -> np.ndarray:
    """|R| of all lattice vectors 0 < |R| < cutoff of a cubic Bravais lattice (float64)."""
    return np.sqrt((lattice_vectors(lattice, a, cutoff) ** 2).sum(1))


def strained_lattice_energy(lattice: str, a: float, strain, **pair) -> float:
    """E/N of the lattice deformed homogeneously, R → R(I + ε) (ε [3, 3], symmetric)."""
    deformation = np.eye(3) + np.asarray(strain, dtype=float)
    # every vector the strain can bring inside the cutoff: |R(I + ε)| ≥ s_min |R|
    s_min = np.linalg.svd(deformation, compute_uv=False).min()
    vectors = lattice_vectors(lattice, a, pair["cutoff"] / s_min * (1 + 1e-9)) @ deformation.T
    phi, _ = model_pair(np.sqrt((vectors**2).sum(1)), **pair)
    return 0.5 * float(phi.sum())


def lattice_energy(lattice: str, a: float, **pair) -> tuple[float, float]:
    """(E/N, d(E/N)/da) of a static lattice, lattice constant ``a``; ``pair`` as ``model_pair``."""
    r = lattice_distances(lattice, a, pair["cutoff"])
    phi, dphi = model_pair(r, **pair)
    # |R| = a·|n| for fixed integer coordinates n, so d|R|/da = |R|/a
    return 0.5 * float(phi.sum()), 0.5 * float((dphi * r / a).sum())


def lattice_minimum(lattice: str, bracket: tuple[float, float], **pair) -> float:
    """Lattice constant where d(E/N)/da = 0 inside ``bracket``, to 1e-12 relative."""
    return brentq(lambda a: lattice_energy(lattice, a, **pair)[1], *bracket, xtol=1e-14, rtol=1e-12)


# -- statistics of MD time series -------------------------------------------------------------
def block_means(series, n_blocks: int) -> np.ndarray:
    """Means of ``n_blocks`` equal consecutive blocks of a 1-D series (a tail that does not fill
    a block is dropped from the start, so the blocks end with the series)."""
    x = np.asarray(series, dtype=float)
    size = len(x) // n_blocks
    if size < 1:
        raise ValueError(f"{len(x)} samples cannot fill {n_blocks} blocks")
    return x[len(x) - size * n_blocks:].reshape(n_blocks, size).mean(1)


def mean_and_error(blocks) -> tuple[float, float]:
    """Mean of independent block values and its standard error s/√n."""
    b = np.asarray(blocks, dtype=float)
    return float(b.mean()), float(b.std(ddof=1) / math.sqrt(len(b)))
