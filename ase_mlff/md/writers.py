"""Observers of a batched run: HDF5 frames, one ``.traj`` per system, the log, the progress line.

All of them read one host snapshot of the state (:func:`snapshot`), taken
only at output intervals: between them nothing leaves the device.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from .. import units
from . import barostat
from .h5 import H5Writer, SystemInfo
from .state import MDState, kinetic_energy, temperature

SUFFIXES = {"traj": ".traj", "h5": ".h5", "log": ".log", "lock": ".lock"}


def output_prefix(output: str | os.PathLike) -> str:
    """``-o run.h5`` (or ``run.traj``, ``run.log``) means the prefix ``run``; ``-o out/`` means ``out/simulation``."""
    prefix = os.fspath(output)
    if prefix.endswith(os.sep) or (os.path.isdir(prefix) and not Path(prefix + ".h5").exists()):
        return os.path.join(prefix, "simulation")
    for suffix in (".traj", ".h5", ".hdf5", ".log"):
        if prefix.endswith(suffix):
            return prefix[: -len(suffix)]
    return prefix


def output_paths(output: str | os.PathLike, n_systems: int = 1) -> dict:
    """{"h5", "log", "lock": Path, "traj": [Path per system]} for an output prefix.

    One system writes ``<prefix>.traj``; many write ``<prefix>.<k>.traj``
    (k zero-padded), each of which ``ase gui`` opens on its own.
    """
    prefix = output_prefix(output)
    paths = {kind: Path(prefix + suffix) for kind, suffix in SUFFIXES.items() if kind != "traj"}
    if n_systems == 1:
        paths["traj"] = [Path(prefix + ".traj")]
    else:
        width = len(str(n_systems - 1))
        paths["traj"] = [Path(f"{prefix}.{k:0{width}d}.traj") for k in range(n_systems)]
    return paths


def all_paths(paths: dict) -> list[Path]:
    return [paths["h5"], paths["log"], *paths["traj"]]


def snapshot(state: MDState) -> dict:
    """The state on the host: numpy arrays, per atom and per system."""
    kinetic = kinetic_energy(state)
    conserved = state.energy + kinetic - state.thermostat.get("work", torch.zeros_like(kinetic))
    npt = {}
    if "min_volume" in state.thermostat:  # NPT: H̃ = U + K + P₀V − work (see .barostat)
        volume = barostat.volume(state.cell)
        conserved = conserved + state.thermostat["pressure"] * volume
        npt = {"cell": state.cell, "volume": volume, "pressure": barostat.pressure(state), "stress": state.stress}
    host = {
        "positions": state.positions, "velocities": state.momenta / state.masses.unsqueeze(1) * units.fs,
        "momenta": state.momenta, "forces": state.forces, "energy": state.energy, "kinetic": kinetic,
        "temperature": temperature(state, kinetic), "conserved": conserved, "system_id": state.system_id,
        "n_atoms": state.n_atoms, **npt,
    }
    host = {k: v.detach().cpu().numpy() for k, v in host.items()}
    host["offsets"] = np.concatenate([[0], np.cumsum(host["n_atoms"])])
    host["step"] = state.step
    return host


def system_infos(structures: list[Atoms], labels, fixed, dof, seeds, attrs) -> list[SystemInfo]:
    return [SystemInfo(label=label, numbers=a.numbers, masses=a.get_masses(), cell=np.asarray(a.cell[:]),
                       pbc=np.asarray(a.pbc), fixed=f, dof=float(d), seed=int(s), attrs=extra)
            for a, label, f, d, s, extra in zip(structures, labels, fixed, dof, seeds, attrs)]


class Outputs:
    """The files of a run.

    Args:
        paths: from :func:`output_paths`.
        templates: one Atoms per system (numbers, cell, pbc, masses, constraints) for ``.traj`` frames.
        mode: "w" (new run) or "a" (restart: append).
    """

    def __init__(self, paths: dict, templates: list[Atoms], systems: list[SystemInfo] | None,
                 metadata: dict, settings, mode: str, timestep_fs: float):
        from ase.io.trajectory import Trajectory

        self.paths, self.settings, self.fs_per_step = paths, settings, timestep_fs
        self.templates = templates
        self.npt = settings.ensemble == "npt"
        self.h5 = H5Writer(paths["h5"], systems, metadata, flush_every=settings.flush_every, mode=mode,
                           cell_series=self.npt)
        self.trajs = []
        if settings.traj_interval > 0:
            _enough_file_handles(len(templates) + 8)
            # properties named here and passed to write(): ASE then skips its per-property
            # cache checks, which cost more than the rest of the frame
            properties = ("energy", "forces", "stress") if self.npt else ("energy", "forces")
            self.trajs = [Trajectory(str(p), "a" if mode == "a" else "w", t, properties=properties)
                          for p, t in zip(paths["traj"], templates)]
        self.log = open(paths["log"], "a" if mode == "a" else "w", buffering=1, encoding="utf-8")
        self.last_recorded: dict[int, int] = {}
        self.many = len(templates) > 1

    # -- per interval ------------------------------------------------------------
    def record(self, host: dict) -> None:
        step = host["step"]
        time_ps = step * self.fs_per_step * 1e-3
        for b, k in enumerate(host["system_id"]):
            lo, hi = host["offsets"][b], host["offsets"][b + 1]
            epot, ekin = host["energy"][b], host["kinetic"][b]
            row = {"step": step, "time": time_ps, "positions": host["positions"][lo:hi],
                   "velocities": host["velocities"][lo:hi], "forces": host["forces"][lo:hi],
                   "potential_energy": epot, "kinetic_energy": ekin, "total_energy": epot + ekin,
                   "temperature": host["temperature"][b], "conserved_energy": host["conserved"][b]}
            if self.npt:
                row.update(cell=host["cell"][b], volume=host["volume"][b], pressure=host["pressure"][b])
            self.h5.append(int(k), row)
            self.last_recorded[int(k)] = step

    def write_traj(self, host: dict) -> None:
        for b, k in enumerate(host["system_id"]):
            lo, hi = host["offsets"][b], host["offsets"][b + 1]
            atoms = self.templates[k]
            atoms.arrays["positions"][:] = host["positions"][lo:hi]
            atoms.arrays["momenta"] = host["momenta"][lo:hi].copy()
            energy = float(host["energy"][b])
            extra = {}
            if self.npt:  # each frame's own cell, and the stress (Voigt, ASE sign) with the other results
                atoms.cell.array[:] = host["cell"][b]
                sigma = host["stress"][b]
                extra["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            self.trajs[k].write(atoms, energy=energy, free_energy=energy, forces=host["forces"][lo:hi], **extra)

    def log_header(self, metadata: dict, restart_step: int | None) -> None:
        log = self.log
        if restart_step is not None:
            log.write(f"# restarted at step {restart_step}: {metadata.get('command_line', '')}\n")
            return
        log.write("# mlff-md run log\n")
        for key in ("command_line", "model_file", "model_sha256", "ensemble", "timestep_fs",
                    "temperature_K", "friction_per_fs", "taut_fs", "steps", "seed", "velocities",
                    *(("pressure_bar", "taup_fs", "compressibility_per_bar", "cell_dof") if self.npt else ()),
                    "n_systems", "n_atoms", "formula", "versions", "created"):
            if key in metadata:
                log.write(f"# {key}: {metadata[key]}\n")
        if self.many:
            log.write(f"# {'step':>8} {'time[ps]':>12} {'running':>8} {'T_mean[K]':>10} {'T_min[K]':>10} "
                      f"{'T_max[K]':>10}\n")
        else:
            npt = f" {'V[Å^3]':>12} {'P[bar]':>10}" if self.npt else ""
            log.write(f"# {'step':>8} {'time[ps]':>12} {'E_tot[eV]':>16} {'E_pot[eV]':>16} "
                      f"{'E_kin[eV]':>14} {'T[K]':>10}{npt}\n")

    def log_line(self, host: dict) -> None:
        step = host["step"]
        t = step * self.fs_per_step * 1e-3
        if self.many:
            temp = host["temperature"]
            self.log.write(f"{step:>10d} {t:>12.5f} {len(temp):>8d} {temp.mean():>10.2f} {temp.min():>10.2f} "
                           f"{temp.max():>10.2f}\n")
        else:
            epot, ekin = host["energy"][0], host["kinetic"][0]
            npt = f" {host['volume'][0]:>12.3f} {host['pressure'][0] / units.bar:>10.1f}" if self.npt else ""
            self.log.write(f"{step:>10d} {t:>12.5f} {epot + ekin:>16.8f} {epot:>16.8f} {ekin:>14.8f} "
                           f"{host['temperature'][0]:>10.2f}{npt}\n")

    def note(self, line: str) -> None:
        self.log.write(f"# {line}\n")

    def close(self, checkpoint: dict | None) -> None:
        try:
            self.h5.close(checkpoint)
        finally:
            for traj in self.trajs:
                traj.close()
            self.log.close()


def _enough_file_handles(needed: int) -> None:
    """One open .traj per system: raise the soft limit of open files if it is too low."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed + 64:
        target = needed + 64 if hard == resource.RLIM_INFINITY else min(hard, needed + 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed + 64:
            raise ValueError(f"{needed} systems need {needed} open .traj files, more than this process may "
                             f"open ({hard}); use --traj-interval 0 (the HDF5 file holds every system)")


class Progress:
    """A one-line status on the terminal: bar, ETA, rate, temperature."""

    def __init__(self, total: int, start: int, n_atoms: int):
        self.stream = sys.stdout
        self.total, self.start, self.n_atoms = total, start, n_atoms
        self.t0 = self.last = time.monotonic()
        self.drawn = False

    def draw(self, step: int, temperature_K: np.ndarray, total_energy: float | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and step < self.total:
            return
        self.last = now
        done = (step - self.start) / max(1, self.total - self.start)
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        bar = "#" * int(30 * done) + "-" * (30 - int(30 * done))
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "--:--:--"
        energy = f"  E_tot {total_energy:.6f} eV" if total_energy is not None else \
            f"  {len(temperature_K)} systems"
        self.stream.write(f"\r{step:>9d}/{self.total} [{bar}] {100 * done:5.1f}%  ETA {eta_text}  "
                          f"{rate:7.1f} steps/s  T {float(np.mean(temperature_K)):8.2f} K{energy} ")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
