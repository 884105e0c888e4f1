"""Energy conservation and temperature statistics of an MD run.

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
    RMS fluctuation                        std of E about the linear fit, per atom
    max |E(t) − E(0)|                      per atom
    =====================================  ==========================================

All from the float64 energies stored in the HDF5 file. PASS when
|drift| ≤ ``max_drift`` (meV/atom/ps).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

#: default ``--max-drift``, meV/atom/ps (see the README: measured drifts of the
#: shipped potentials at 0.5 fs are well below it, a broken model is far above)
DEFAULT_MAX_DRIFT = 1.0


@dataclass(frozen=True)
class ConservationReport:
    n_frames: int
    duration_ps: float
    drift_meV_per_atom_per_ps: float
    drift_to_kinetic_fluctuation: float
    rms_fluctuation_meV_per_atom: float
    max_deviation_meV_per_atom: float
    max_drift_meV_per_atom_per_ps: float
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict:
        return {"kind": "energy_conservation", **asdict(self), "verdict": self.verdict}

    def format(self) -> str:
        return "\n".join([
            f"Energy conservation (NVE, {self.n_frames} frames over {self.duration_ps:.4g} ps):",
            f"  drift of total energy      {self.drift_meV_per_atom_per_ps:+.4g} meV/atom/ps",
            f"  drift / E_kin fluctuation  {self.drift_to_kinetic_fluctuation:.4g}",
            f"  RMS fluctuation            {self.rms_fluctuation_meV_per_atom:.4g} meV/atom",
            f"  max |E(t) - E(0)|          {self.max_deviation_meV_per_atom:.4g} meV/atom",
            f"  {self.verdict}: |drift| {'<=' if self.passed else '>'} "
            f"{self.max_drift_meV_per_atom_per_ps:g} meV/atom/ps (--max-drift)",
        ])


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


def energy_conservation(time_ps, total_energy, kinetic_energy, n_atoms: int,
                        max_drift: float = DEFAULT_MAX_DRIFT) -> ConservationReport:
    """Drift and fluctuation statistics of the total energy.

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
    t0 = t - t[0]
    duration = float(t0[-1])
    # fit in meV relative to E(0): keeps the fit well conditioned for large |E|
    de = (e - e[0]) * 1e3 / n_atoms  # [F], meV/atom
    slope, intercept = np.polyfit(t0, de, 1)
    residual = de - (slope * t0 + intercept)
    kinetic_std = float(np.std(k)) * 1e3 / n_atoms  # meV/atom
    ratio = abs(slope) * duration / kinetic_std if kinetic_std > 0 else float("inf")
    drift = float(slope)
    return ConservationReport(
        n_frames=len(t), duration_ps=duration, drift_meV_per_atom_per_ps=drift,
        drift_to_kinetic_fluctuation=float(ratio),
        rms_fluctuation_meV_per_atom=float(np.sqrt(np.mean(residual**2))),
        max_deviation_meV_per_atom=float(np.max(np.abs(de))),
        max_drift_meV_per_atom_per_ps=float(max_drift), passed=bool(abs(drift) <= max_drift),
    )


def temperature_statistics(temperature, target_K: float) -> TemperatureReport:
    """Mean and standard deviation of the instantaneous temperature [F] in K."""
    temp = np.asarray(temperature, dtype=np.float64)
    if len(temp) == 0:
        raise ValueError("no frames recorded")
    return TemperatureReport(n_frames=len(temp), target_K=float(target_K),
                             mean_K=float(temp.mean()), std_K=float(temp.std()))


def report_from_h5(path: str | os.PathLike, max_drift: float | None = None):
    """The report of a run from its HDF5 file: ConservationReport for NVE, else TemperatureReport.

    Args:
        max_drift: threshold, meV/atom/ps; None: the one the run used (or the default).
    """
    from .h5 import read_series

    s = read_series(path)
    meta = s["metadata"]
    if meta.get("ensemble", "nve") == "nve":
        if max_drift is None:
            max_drift = float(meta.get("max_drift_meV_per_atom_per_ps", DEFAULT_MAX_DRIFT))
        return energy_conservation(s["time"], s["total_energy"], s["kinetic_energy"], s["n_atoms"],
                                   max_drift)
    return temperature_statistics(s["temperature"], float(meta.get("temperature_K", np.nan)))


def plot(path: str | os.PathLike, png: str | os.PathLike) -> None:
    """PNG of energies (per atom, relative to E_tot(0)) and temperature against time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib "
                          "(or pip install 'ase-mlff[plot]')") from None
    from .h5 import read_series

    s = read_series(path)
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
