"""Energy conservation and temperature statistics of an MD run (and pressure, volume, density of NPT).

NPT runs are judged as NVE runs are, on the effective energy H̃ = U + K +
P₀V − work (``conserved_energy``, see :mod:`.barostat`): the thermostat and
barostat work is taken out, so what drifts is integration error.

For NVE the total energy E(t) = E_pot + E_kin should stay constant; Velocity
Verlet with a smooth potential keeps it within a bounded O(dt²) oscillation
(shadow Hamiltonian), so a secular trend means a non-smooth or non-conservative
force field, too large a timestep, or round-off. With n atoms and t in ps:

    =====================================  ==========================================
    quantity                               code
    =====================================  ==========================================
    drift  = slope of least-squares fit    ``np.polyfit(t, E, 1)[0] / n`` (meV/atom/ps)
    drift ratio = |drift| · n · T / σ(E_kin)  total drift over the run T, relative to the
                                           kinetic-energy fluctuation
    RMS fluctuation σ                      std of E about the linear fit, per atom
    slope uncertainty u = 6 σ / T          ``SLOPE_BOUND_PER_RMS * rms / duration``
    swings                                 ``_swings(residual, rms / 2)``
    max |E(t) − E(0)|                      per atom
    =====================================  ==========================================

All from the float64 energies stored in the HDF5 file.

Verdict, with threshold m = ``max_drift`` (meV/atom/ps): PASS when
|drift| + u ≤ m, FAIL when |drift| − u > m, UNDECIDED (``passed`` None)
when m lies inside the band, or when the run is too short for u to mean
anything (fewer than ``MIN_SWINGS`` swings, below).

Why u = 6σ/T and not the textbook σ·√(12/F)/T: the residuals of a Verlet
total energy are not independent samples but a bounded oscillation, strongly
correlated from frame to frame; recording more frames over the same time
adds no information, so an uncertainty that shrinks as 1/√F would call
noise a drift (a 20-step ethanol run "failed" at +6.9 meV/atom/ps that
way). Instead the bound is the worst case: a zero-mean oscillation bounded
by ±A tilts the least-squares line by at most Σ|t−t̄|·A / Σ(t−t̄)² = 3A/T
(continuous limit), reached by a single step from −A to +A at mid-run, whose
detrended RMS is A/2; so |slope error| ≤ 6σ/T, with σ measured. A sine
over exactly one period fakes 4.3σ/T, over k periods ∝ 1/k. That assumes
the run spans at least about one period of the fluctuation: a window
shorter than that sees part of one oscillation, whose linear part hides in
the slope while the residual keeps only its curvature (half a sine period
fakes 27σ/T). This is checked: the detrended residual must swing from
above +σ/2 to below −σ/2 (or back) at least ``MIN_SWINGS`` times (the
single step swings 3 times, a window shorter than a period at most 3, k
periods about 2k); with fewer, no verdict is given. A series straight to
within the round-off of the float64 energies has no oscillation to mistake
and needs no such check.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

#: default ``--max-drift``, meV/atom/ps (see the README: measured drifts of the
#: shipped potentials at 0.5 fs are well below it, a broken model is far above)
DEFAULT_MAX_DRIFT = 1.0
#: |slope error| ≤ this × detrended RMS / duration for a bounded oscillation (module doc)
SLOPE_BOUND_PER_RMS = 6.0
#: swings of the residual across ±σ/2 needed before the bound is trusted (module doc)
MIN_SWINGS = 4


@dataclass(frozen=True)
class ConservationReport:
    """Energy conservation of an NVE run (module doc: quantities and verdict).

    Attributes:
        passed: True (PASS), False (FAIL), None (UNDECIDED: run too short).
        slope_uncertainty_meV_per_atom_per_ps: u = 6σ/T, the most a bounded
            fluctuation of the measured RMS can tilt the fitted slope.
        fluctuation_swings: swings of the detrended energy across ±σ/2.
    """

    n_frames: int
    duration_ps: float
    drift_meV_per_atom_per_ps: float
    drift_to_kinetic_fluctuation: float
    rms_fluctuation_meV_per_atom: float
    max_deviation_meV_per_atom: float
    max_drift_meV_per_atom_per_ps: float
    passed: bool | None
    slope_uncertainty_meV_per_atom_per_ps: float
    fluctuation_swings: int

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "UNDECIDED"}[self.passed]

    def as_dict(self) -> dict:
        """Fields and verdict; ``passed`` is left out when None (HDF5 attributes cannot hold None)."""
        fields = {k: v for k, v in asdict(self).items() if v is not None}
        return {"kind": "energy_conservation", **fields, "verdict": self.verdict}

    def format(self, ensemble: str = "NVE", quantity: str = "total energy    ") -> str:
        return "\n".join([
            f"Energy conservation ({ensemble}, {self.n_frames} frames over {self.duration_ps:.4g} ps):",
            f"  drift of {quantity}  {self.drift_meV_per_atom_per_ps:+.4g} "
            f"± {self.slope_uncertainty_meV_per_atom_per_ps:.2g} meV/atom/ps",
            f"  drift / E_kin fluctuation  {self.drift_to_kinetic_fluctuation:.4g}",
            f"  RMS fluctuation            {self.rms_fluctuation_meV_per_atom:.4g} meV/atom",
            f"  max |E(t) - E(0)|          {self.max_deviation_meV_per_atom:.4g} meV/atom",
            f"  {self.verdict}: {self.explanation()}",
        ])

    def explanation(self) -> str:
        """One sentence: why PASS, FAIL or UNDECIDED."""
        drift, u = abs(self.drift_meV_per_atom_per_ps), self.slope_uncertainty_meV_per_atom_per_ps
        threshold = f"{self.max_drift_meV_per_atom_per_ps:g} meV/atom/ps (--max-drift)"
        if self.passed is True:
            return f"|drift| + uncertainty = {drift + u:.3g} <= {threshold}"
        if self.passed is False:
            return f"|drift| - uncertainty = {drift - u:.3g} > {threshold}"
        run = f"{self.n_frames} frames over {self.duration_ps:.4g} ps"
        if self.fluctuation_swings < MIN_SWINGS:
            return (f"run too short to judge drift ({run}: the energy fluctuation swung "
                    f"{self.fluctuation_swings} times about the fitted line, fewer than {MIN_SWINGS}, "
                    "so a drift cannot be told from part of one oscillation): run longer")
        longer = ""
        if self.max_drift_meV_per_atom_per_ps > 0:
            # u = 6σ/T falls as 1/T while σ stays bounded: without drift, PASS once 6σ/T <= threshold
            needed = self.duration_ps * u / self.max_drift_meV_per_atom_per_ps
            longer = f" (without drift, a run of about {needed:.3g} ps at this fluctuation would PASS)"
        return (f"run too short to judge drift ({run}; slope uncertainty ±{u:.3g} meV/atom/ps vs "
                f"threshold {self.max_drift_meV_per_atom_per_ps:g}): run longer{longer}")


@dataclass(frozen=True)
class TemperatureReport:
    n_frames: int
    target_K: float
    mean_K: float
    std_K: float

    def as_dict(self) -> dict:
        return {"kind": "temperature", **asdict(self)}

    def format(self) -> str:
        return (f"Temperature ({self.n_frames} frames): mean {self.mean_K:.2f} K, "
                f"std {self.std_K:.2f} K, target {self.target_K:g} K "
                f"(mean - target = {self.mean_K - self.target_K:+.2f} K)")


@dataclass(frozen=True)
class NPTReport:
    """An NPT run: drift of the effective energy H̃ (judged as NVE's total energy), temperature,
    pressure, volume and density with standard errors from block averaging
    (:func:`block_standard_error`).

    Attributes:
        conservation: of H̃ = U + K + P₀V − work (``conserved_energy``).
        target_bar, mean_pressure_bar, pressure_sem_bar: instantaneous pressure (kinetic term included).
        mean_volume_A3, volume_sem_A3; mean_density_g_cm3, density_sem_g_cm3 (total mass / V).
    """

    conservation: ConservationReport
    temperature: TemperatureReport
    target_bar: float
    mean_pressure_bar: float
    pressure_sem_bar: float
    mean_volume_A3: float
    volume_sem_A3: float
    mean_density_g_cm3: float
    density_sem_g_cm3: float

    @property
    def passed(self) -> bool | None:
        return self.conservation.passed

    @property
    def verdict(self) -> str:
        return self.conservation.verdict

    @property
    def drift_meV_per_atom_per_ps(self) -> float:
        return self.conservation.drift_meV_per_atom_per_ps

    def as_dict(self) -> dict:
        figures = {k: v for k, v in asdict(self).items() if k not in ("conservation", "temperature")}
        temperature = {k: v for k, v in self.temperature.as_dict().items() if k not in ("kind", "n_frames")}
        return {**self.conservation.as_dict(), **temperature, **figures, "kind": "npt"}

    def format(self) -> str:
        return "\n".join([
            self.conservation.format("NPT, effective energy H = U + K + P0 V - work", "effective energy"),
            self.temperature.format(),
            f"Pressure: mean {self.mean_pressure_bar:.1f} ± {self.pressure_sem_bar:.1f} bar, target "
            f"{self.target_bar:g} bar (kinetic term included; ± one standard error, block averaging)",
            f"Volume: mean {self.mean_volume_A3:.2f} ± {self.volume_sem_A3:.2f} Å³; density "
            f"{self.mean_density_g_cm3:.4f} ± {self.density_sem_g_cm3:.4f} g/cm³",
        ])


def block_standard_error(values) -> float:
    """Standard error of the mean of a correlated series by blocking (Flyvbjerg & Petersen,
    J. Chem. Phys. 91, 461 (1989)): the series is halved into pair means again and again, and the
    largest naive error estimate over the levels with at least 8 blocks is returned (the plateau,
    or the most conservative estimate when the series is too short to show one). NaN below 16 values.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 16:
        return float("nan")
    best = 0.0
    while len(x) >= 8:
        best = max(best, float(np.std(x, ddof=1) / np.sqrt(len(x))))
        x = 0.5 * (x[: len(x) // 2 * 2: 2] + x[1: len(x) // 2 * 2: 2])
    return best


def energy_conservation(time_ps, total_energy, kinetic_energy, n_atoms: int,
                        max_drift: float = DEFAULT_MAX_DRIFT) -> ConservationReport:
    """Drift and fluctuation statistics of the total energy, and the verdict (module doc).

    Args:
        time_ps: [F] ps. total_energy, kinetic_energy: [F] eV (float64).
        n_atoms: number of atoms (statistics are per atom).
        max_drift: PASS threshold on |drift|, meV/atom/ps.
    """
    t = np.asarray(time_ps, dtype=np.float64)
    e = np.asarray(total_energy, dtype=np.float64)
    k = np.asarray(kinetic_energy, dtype=np.float64)
    if len(t) < 3:
        raise ValueError(f"need at least 3 recorded frames to judge energy conservation, got {len(t)}; "
                         "run more steps or record HDF5 frames more often (--h5-interval)")
    if not (np.isfinite(e).all() and np.isfinite(t).all()):
        raise ValueError("total energies are not finite; the run blew up")
    if not max_drift >= 0:
        raise ValueError(f"max_drift must be a number >= 0 meV/atom/ps, got {max_drift}")
    t0 = t - t[0]
    duration = float(t0[-1])
    # fit in meV relative to E(0): keeps the fit well conditioned for large |E|
    de = (e - e[0]) * 1e3 / n_atoms  # [F], meV/atom
    slope, intercept = np.polyfit(t0, de, 1)
    residual = de - (slope * t0 + intercept)
    rms = float(np.sqrt(np.mean(residual**2)))  # meV/atom
    kinetic_std = float(np.std(k)) * 1e3 / n_atoms  # meV/atom
    ratio = abs(slope) * duration / kinetic_std if kinetic_std > 0 else float("inf")
    drift = float(slope)
    uncertainty = SLOPE_BOUND_PER_RMS * rms / duration  # meV/atom/ps
    swings = _swings(residual, 0.5 * rms)
    # a residual at the round-off of the energies themselves: a straight line, no oscillation
    round_off = 4 * np.finfo(np.float64).eps * float(np.max(np.abs(e))) * 1e3 / n_atoms  # meV/atom
    straight = rms <= round_off
    return ConservationReport(
        n_frames=len(t), duration_ps=duration, drift_meV_per_atom_per_ps=drift,
        drift_to_kinetic_fluctuation=float(ratio), rms_fluctuation_meV_per_atom=rms,
        max_deviation_meV_per_atom=float(np.max(np.abs(de))),
        max_drift_meV_per_atom_per_ps=float(max_drift),
        passed=_verdict(abs(drift), uncertainty, float(max_drift), swings >= MIN_SWINGS or straight),
        slope_uncertainty_meV_per_atom_per_ps=float(uncertainty), fluctuation_swings=swings,
    )


def _verdict(drift: float, uncertainty: float, max_drift: float, long_enough: bool) -> bool | None:
    """PASS (True) / FAIL (False) when the whole band drift ± uncertainty is on one side."""
    if not long_enough:
        return None
    if drift - uncertainty > max_drift:
        return False
    if drift + uncertainty <= max_drift:
        return True
    return None


def _swings(residual: np.ndarray, band: float) -> int:
    """Times the series goes from above +band to below −band or back (hysteresis:
    round-off wiggles about zero are not counted)."""
    side = np.where(residual > band, 1, np.where(residual < -band, -1, 0))
    side = side[side != 0]
    return int(np.count_nonzero(side[1:] != side[:-1]))


def temperature_statistics(temperature, target_K: float) -> TemperatureReport:
    """Mean and standard deviation of the instantaneous temperature [F] in K."""
    temp = np.asarray(temperature, dtype=np.float64)
    if len(temp) == 0:
        raise ValueError("no frames recorded")
    return TemperatureReport(n_frames=len(temp), target_K=float(target_K),
                             mean_K=float(temp.mean()), std_K=float(temp.std()))


def run_report(ensemble: str, frames, n_atoms: int, target_K: float, max_drift: float,
               target_bar: float | None = None, mass_amu: float | None = None):
    """ConservationReport for NVE, NPTReport for NPT, else TemperatureReport, from one system's
    frame series (``time``, ``total_energy``, ``kinetic_energy``, ``temperature``; NPT also
    ``conserved_energy``, ``volume``, ``pressure``: arrays or datasets). NPT needs ``target_bar``
    and the system's total mass ``mass_amu``."""
    if ensemble == "nve":
        return energy_conservation(frames["time"][:], frames["total_energy"][:], frames["kinetic_energy"][:],
                                   n_atoms, max_drift)
    if ensemble == "npt":
        from ..units import G_PER_CM3, bar

        conservation = energy_conservation(frames["time"][:], frames["conserved_energy"][:],
                                           frames["kinetic_energy"][:], n_atoms, max_drift)
        pressure = np.asarray(frames["pressure"][:]) / bar
        volume = np.asarray(frames["volume"][:])
        density = mass_amu * G_PER_CM3 / volume
        return NPTReport(conservation, temperature_statistics(frames["temperature"][:], target_K),
                         float(target_bar), float(pressure.mean()), block_standard_error(pressure),
                         float(volume.mean()), block_standard_error(volume), float(density.mean()),
                         block_standard_error(density))
    return temperature_statistics(frames["temperature"][:], target_K)


def report_from_h5(path: str | os.PathLike, max_drift: float | None = None, system: int = 0):
    """The report of a run from its HDF5 file: ConservationReport for NVE, else TemperatureReport.

    Args:
        max_drift: threshold, meV/atom/ps; None: the one the run used (or the default).
    """
    from .h5 import read_series

    s = read_series(path, system)
    meta = s["metadata"]
    if max_drift is None:
        max_drift = float(meta.get("max_drift_meV_per_atom_per_ps", DEFAULT_MAX_DRIFT))
    target = s["system"].get("temperature_K", meta.get("temperature_K", np.nan))  # per system since version 2
    target_bar = s["system"].get("pressure_bar", meta.get("pressure_bar"))
    return run_report(meta.get("ensemble", "nve"), s, s["n_atoms"], float(target), max_drift, target_bar,
                      s["mass_amu"])


def plot(path: str | os.PathLike, png: str | os.PathLike, system: int = 0) -> None:
    """PNG of energies (per atom, relative to E_tot(0)) and temperature against time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib "
                          "(or pip install 'ase-mlff[plot]')") from None
    from .h5 import read_series

    s = read_series(path, system)
    n = s["n_atoms"]
    t = s["time"]
    e0 = s["total_energy"][0] if len(t) else 0.0
    fig, (ax_e, ax_t) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    for name, label in (("total_energy", "total"), ("potential_energy", "potential"),
                        ("kinetic_energy", "kinetic")):
        values = s[name] - (e0 if name != "kinetic_energy" else 0.0)
        ax_e.plot(t, values * 1e3 / n, label=label)
    ax_e.set_ylabel("energy (meV/atom)\npotential, total: relative to E_tot(0)")
    ax_e.legend()
    ax_t.plot(t, s["temperature"], color="C3")
    target = s["metadata"].get("temperature_K")
    if s["metadata"].get("ensemble", "nve") != "nve" and target is not None:
        ax_t.axhline(float(target), color="k", ls="--", lw=1, label="target")
        ax_t.legend()
    ax_t.set_xlabel("time (ps)")
    ax_t.set_ylabel("temperature (K)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
