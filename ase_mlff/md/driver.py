"""The MD driver: an ASE integrator with observers for HDF5, .traj, log and progress.

    from ase_mlff import MLFFCalculator
    from ase_mlff.md import run_md
    result = run_md(atoms, MLFFCalculator("model.pt"), ensemble="langevin",
                    timestep_fs=0.5, temperature_K=300, friction_per_fs=0.01, steps=10_000, seed=1)

Time stepping is ASE's (``VelocityVerlet``, ``Langevin``, ``Bussi``,
``NoseHooverChainNVT``); everything this module adds is attached as observers,
so its per-step work is one cheap sanity check plus buffered writes every
``h5_interval``/``traj_interval``/``log_interval`` steps. Intervals count
absolute steps (``step % interval == 0``), so a restarted run records the same
steps as an uninterrupted one.

========================  =======================================================
user quantity (unit)      ASE argument
========================  =======================================================
``timestep_fs`` (fs)      ``timestep = timestep_fs * units.fs``
``friction_per_fs`` (1/fs)  ``friction = friction_per_fs / units.fs``
``taut_fs`` (fs)          Bussi ``taut`` / Nosé-Hoover ``tdamp`` = ``taut_fs * units.fs``
``temperature_K`` (K)     ``temperature_K``
========================  =======================================================
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from ase import Atoms

from .. import units
from ..files import atomic_write
from .h5 import H5Writer, read_checkpoint
from .report import DEFAULT_MAX_DRIFT, energy_conservation, temperature_statistics
from .validate import check_settings, check_structure

ENSEMBLES = ("nve", "langevin", "bussi", "nose-hoover")
VELOCITY_MODES = ("maxwell-boltzmann", "input")
EXIT_BLOWUP = 3
SUFFIXES = {"traj": ".traj", "h5": ".h5", "log": ".log"}


@dataclass(frozen=True)
class MDSettings:
    """Everything that defines a run (stored in the HDF5 file, reused by restarts).

    ``steps`` is the total number of steps of the run, counted from step 0.
    """

    ensemble: str = "nve"
    timestep_fs: float = 0.5
    temperature_K: float = 300.0
    friction_per_fs: float = 0.01
    taut_fs: float = 100.0
    steps: int = 1000
    seed: int | None = None
    velocities: str = "maxwell-boltzmann"
    traj_interval: int = 10
    h5_interval: int = 10
    log_interval: int = 100
    flush_every: int = 100
    max_drift_meV_per_atom_per_ps: float = DEFAULT_MAX_DRIFT


@dataclass
class MDResult:
    """Outcome of a run. ``status``: "completed", "blew-up" or "interrupted"."""

    status: str
    message: str
    last_step: int
    settings: MDSettings
    paths: dict
    report: object | None = None
    wall_s: float = 0.0
    steps_run: int = 0

    @property
    def exit_code(self) -> int:
        if self.status == "blew-up":
            return EXIT_BLOWUP
        if self.status == "interrupted":
            return 130
        if self.report is not None and getattr(self.report, "passed", True) is False:
            return 1
        return 0


class BlowUp(RuntimeError):
    def __init__(self, step: int, reason: str):
        super().__init__(f"simulation blew up at step {step}: {reason}")
        self.step, self.reason = step, reason


class _Stop(Exception):
    """Raised at a step boundary after SIGINT/SIGTERM asked the run to stop."""


def output_paths(output: str | os.PathLike) -> dict[str, Path]:
    """{"traj", "h5", "log"} -> path for an output prefix."""
    prefix = str(output)
    for suffix in SUFFIXES.values():  # "-o run.h5" means the prefix "run"
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    return {kind: Path(prefix + suffix) for kind, suffix in SUFFIXES.items()}


def existing_outputs(output) -> list[Path]:
    return [p for p in output_paths(output).values() if p.exists()]


def make_integrator(atoms: Atoms, settings: MDSettings, rng: np.random.Generator):
    """The ASE integrator for ``settings.ensemble``, in ASE units."""
    dt = settings.timestep_fs * units.fs
    name = settings.ensemble
    if name == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if name == "langevin":
        from ase.md.langevin import Langevin

        # fixcm=False: ASE deprecates the centre-of-mass correction (it biases NVT sampling)
        return Langevin(atoms, timestep=dt, temperature_K=settings.temperature_K,
                        friction=settings.friction_per_fs / units.fs, fixcm=False, rng=rng)
    if name == "bussi":
        try:
            from ase.md.bussi import Bussi
        except ImportError:
            raise ValueError("the Bussi thermostat needs ASE >= 3.24: pip install -U ase") from None
        return Bussi(atoms, timestep=dt, temperature_K=settings.temperature_K,
                     taut=settings.taut_fs * units.fs, rng=rng)
    if name == "nose-hoover":
        try:
            from ase.md.nose_hoover_chain import NoseHooverChainNVT
        except ImportError:
            raise ValueError("the Nosé-Hoover chain needs ASE >= 3.24: pip install -U ase") from None
        return NoseHooverChainNVT(atoms, timestep=dt, temperature_K=settings.temperature_K,
                                  tdamp=settings.taut_fs * units.fs)
    raise ValueError(f"unknown ensemble {name!r}; valid: {', '.join(ENSEMBLES)}")


def _thermostat_state(dyn) -> dict:
    state = {}
    if hasattr(dyn, "transferred_energy"):  # Bussi
        state["transferred_energy"] = float(dyn.transferred_energy)
    thermostat = getattr(dyn, "_thermostat", None)  # Nosé-Hoover chain
    if thermostat is not None:
        state["eta"] = thermostat._eta.tolist()
        state["p_eta"] = thermostat._p_eta.tolist()
    return state


def _restore_thermostat(dyn, state: dict) -> None:
    if "transferred_energy" in state:
        dyn.transferred_energy = state["transferred_energy"]
    if "eta" in state:
        dyn._thermostat._eta = np.array(state["eta"], dtype=np.float64)
        dyn._thermostat._p_eta = np.array(state["p_eta"], dtype=np.float64)


def initialize_velocities(atoms: Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta, zero total momentum and, for non-periodic systems,
    zero angular momentum, scaled so the run starts at exactly ``temperature_K``
    (as ``Atoms.get_temperature`` counts it): a 9-atom sample would otherwise start
    anywhere within ±25 % of the temperature asked for."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29 deprecates MaxwellBoltzmannDistribution
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    if len(atoms) > 1:
        vd.Stationary(atoms)
    # rotations only for molecules; a linear or single-atom molecule has a zero
    # moment of inertia, which ZeroRotation would divide by
    if not atoms.pbc.any() and len(atoms) > 2 and atoms.get_moments_of_inertia().min() > 1e-8:
        vd.ZeroRotation(atoms)
    current = atoms.get_temperature()
    if current > 0:
        atoms.set_momenta(atoms.get_momenta() * np.sqrt(temperature_K / current))


class _Simulation:
    """One run: the integrator, its observers and the open output files."""

    def __init__(self, atoms: Atoms, settings: MDSettings, paths: dict, rng, start_step: int,
                 metadata: dict, mode: str, progress: bool, cutoff: float | None):
        from ase.io.trajectory import Trajectory

        self.atoms, self.settings, self.paths, self.rng = atoms, settings, paths, rng
        self.calc = atoms.calc
        self.dyn = make_integrator(atoms, settings, rng)
        self.dyn.nsteps = start_step
        self.start_step = start_step
        self.masses = atoms.get_masses()[:, None]  # [N, 1], amu
        self.dof = atoms.get_number_of_degrees_of_freedom()
        self.fs_per_step = settings.timestep_fs
        # blow-up limits: far beyond any target temperature; for molecules, atoms
        # that left the initial extent by more than a few cutoffs have flown off
        self.max_temperature = max(10.0 * settings.temperature_K, settings.temperature_K + 5000.0)
        self.periodic = bool(atoms.pbc.any())
        if not self.periodic:
            extent = np.linalg.norm(atoms.positions - atoms.get_center_of_mass(), axis=1).max()
            # a restart keeps the limit of the original start
            default = extent + max(10.0, 2.0 * (cutoff or 5.0))
            self.max_radius = float(metadata.get("max_radius_A", default))
            metadata["max_radius_A"] = self.max_radius
        self.stop_signal: str | None = None
        self.h5 = H5Writer(paths["h5"], atoms, metadata, flush_every=settings.flush_every, mode=mode)
        # properties named here and passed to write(): ASE then skips its per-property
        # cache checks, which cost more than the rest of the frame
        self.traj = Trajectory(str(paths["traj"]), "a" if mode == "a" else "w", atoms,
                               properties=("energy", "forces"))
        self.log = open(paths["log"], "a" if mode == "a" else "w", buffering=1, encoding="utf-8")
        self.progress = _Progress(settings.steps, start_step) if progress else None
        self.last_recorded = None
        dyn = self.dyn
        dyn.attach(self._check, interval=1)
        dyn.attach(self._record, interval=settings.h5_interval)
        if settings.traj_interval > 0:
            dyn.attach(self._write_traj, interval=settings.traj_interval)
        dyn.attach(self._log_line, interval=settings.log_interval)
        if self.progress is not None:
            dyn.attach(self._draw, interval=max(1, min(10, settings.steps // 100 or 1)))
        # last, so that a step whose observers have begun records all its outputs
        # before a SIGINT/SIGTERM stops the run there
        dyn.attach(self._stop_if_signalled, interval=1)

    # -- observers -----------------------------------------------------------
    def _stop_if_signalled(self) -> None:
        if self.stop_signal is not None:
            raise _Stop(self.stop_signal)

    def _check(self) -> None:
        step = self.dyn.nsteps
        results = self.calc.results
        energy = results.get("energy")
        if energy is None or not np.isfinite(energy):
            raise BlowUp(step, f"potential energy is {energy}")
        if not np.isfinite(results["forces"]).all():
            raise BlowUp(step, "forces are not finite")
        momenta = self.atoms.arrays["momenta"]
        kinetic = 0.5 * float(np.vdot(momenta, momenta / self.masses))
        temperature = 2.0 * kinetic / (self.dof * units.kB)
        if not temperature <= self.max_temperature:  # also catches NaN
            raise BlowUp(step, f"temperature {temperature:.4g} K is far beyond "
                         f"{self.settings.temperature_K:g} K (limit {self.max_temperature:g} K)")
        if not self.periodic and step % 10 == 0:
            radius = np.linalg.norm(self.atoms.positions - self.atoms.get_center_of_mass(), axis=1)
            if radius.max() > self.max_radius:
                raise BlowUp(step, f"atom {int(radius.argmax())} is {radius.max():.3g} Å from the "
                             f"centre of mass: atoms flew apart (limit {self.max_radius:.3g} Å)")

    def _record(self) -> None:
        atoms, step = self.atoms, self.dyn.nsteps
        momenta = atoms.arrays["momenta"]
        velocities = momenta / self.masses  # [N, 3], Å / ASE time
        kinetic = 0.5 * float(np.vdot(momenta, velocities))
        self.h5.append(step, step * self.fs_per_step * 1e-3, atoms.positions, velocities * units.fs,
                       self.calc.results["forces"], self.calc.results["energy"], kinetic,
                       2.0 * kinetic / (self.dof * units.kB))
        self.last_recorded = step
        if self.h5.due():
            self.h5.flush(self.checkpoint())

    def _write_traj(self) -> None:
        results = self.calc.results
        self.traj.write(self.atoms, energy=results["energy"], free_energy=results["energy"],
                        forces=results["forces"])

    def _log_line(self) -> None:
        step = self.dyn.nsteps
        epot = self.calc.results["energy"]
        ekin = self.atoms.get_kinetic_energy()
        temperature = 2.0 * ekin / (self.dof * units.kB)
        self.log.write(f"{step:>10d} {step * self.fs_per_step * 1e-3:>12.5f} {epot + ekin:>16.8f} "
                       f"{epot:>16.8f} {ekin:>14.8f} {temperature:>10.2f}\n")

    def _draw(self) -> None:
        ekin = self.atoms.get_kinetic_energy()
        self.progress.draw(self.dyn.nsteps, 2.0 * ekin / (self.dof * units.kB),
                           self.calc.results["energy"] + ekin)

    # -- state -----------------------------------------------------------------
    def checkpoint(self) -> dict:
        return {
            "step": self.dyn.nsteps,
            "positions": self.atoms.positions,
            "momenta": self.atoms.arrays["momenta"],
            "rng_state": self.rng.bit_generator.state,
            "thermostat": _thermostat_state(self.dyn),
        }

    def run(self) -> tuple[str, str]:
        """Run to ``settings.steps``; returns (status, message)."""
        remaining = self.settings.steps - self.dyn.nsteps
        try:
            self.dyn.run(steps=remaining)
        except BlowUp as error:
            return "blew-up", f"{error}; kept the frames up to step {self.last_recorded}"
        except _Stop as stop:
            return "interrupted", f"stopped by {stop} at step {self.dyn.nsteps}; files closed cleanly"
        except Exception:
            if not np.isfinite(self.atoms.positions).all():
                step = self.dyn.nsteps + 1
                return "blew-up", (f"simulation blew up at step {step}: positions are not finite; "
                                   f"kept the frames up to step {self.last_recorded}")
            raise
        return "completed", f"completed {self.settings.steps} steps"

    def close(self, status: str) -> None:
        # after a blow-up or a crash the current state is not trustworthy: keep
        # the previous checkpoint (a restart drops the frames recorded after it)
        consistent = status in ("completed", "interrupted")
        try:
            self.h5.set_attrs(status=status, last_step=int(self.dyn.nsteps))
            self.h5.close(self.checkpoint() if consistent else None)
        finally:
            self.traj.close()
            self.log.close()
            if self.progress is not None:
                self.progress.finish()


class _Progress:
    """A one-line status on the terminal: bar, ETA, temperature, total energy."""

    def __init__(self, total: int, start: int):
        import sys

        self.stream = sys.stdout
        self.total, self.start = total, start
        self.t0 = self.last = time.monotonic()
        self.drawn = False

    def draw(self, step: int, temperature: float, total_energy: float) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and step < self.total:
            return
        self.last = now
        done = (step - self.start) / max(1, self.total - self.start)
        rate = (step - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        bar = "#" * int(30 * done) + "-" * (30 - int(30 * done))
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "--:--:--"
        self.stream.write(f"\r{step:>9d}/{self.total} [{bar}] {100 * done:5.1f}%  ETA {eta_text}  "
                          f"{rate:7.1f} steps/s  T {temperature:8.2f} K  E_tot {total_energy:.6f} eV ")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _package_versions() -> dict:
    import platform

    import ase
    import h5py

    from .._version import __version__

    versions = {"ase-mlff": __version__, "ase": ase.__version__, "numpy": np.__version__,
                "h5py": h5py.__version__, "python": platform.python_version()}
    torch = sys.modules.get("torch")  # the calculator's; never imported just for this
    if torch is not None:
        versions["torch"] = torch.__version__
    return versions


def _log_header(log, metadata: dict, restart_step: int | None) -> None:
    if restart_step is not None:
        log.write(f"# restarted at step {restart_step}: {metadata.get('command_line', '')}\n")
        return
    log.write("# mlff-md run log\n")
    for key in ("command_line", "model_file", "model_sha256", "ensemble", "timestep_fs",
                "temperature_K", "friction_per_fs", "taut_fs", "steps", "seed", "velocities",
                "n_atoms", "formula", "versions", "created"):
        if key in metadata:
            log.write(f"# {key}: {metadata[key]}\n")
    log.write(f"# {'step':>8} {'time[ps]':>12} {'E_tot[eV]':>16} {'E_pot[eV]':>16} "
              f"{'E_kin[eV]':>14} {'T[K]':>10}\n")


def _finish(sim: _Simulation, status: str, message: str, t_start: float, steps_before: int) -> MDResult:
    settings = sim.settings
    report = None
    wall = time.perf_counter() - t_start
    sim.close(status)
    if status == "completed":
        from .h5 import read_series

        series = read_series(sim.paths["h5"])
        try:
            if settings.ensemble == "nve":
                report = energy_conservation(series["time"], series["total_energy"],
                                             series["kinetic_energy"], series["n_atoms"],
                                             settings.max_drift_meV_per_atom_per_ps)
            else:
                report = temperature_statistics(series["temperature"], settings.temperature_K)
        except ValueError as error:  # too few frames to judge
            message += f"\nno report: {error}"
        if report is not None:
            import h5py

            with h5py.File(sim.paths["h5"], "a") as f:
                group = f.require_group("report")
                for key, value in report.as_dict().items():
                    group.attrs[key] = value
                if hasattr(report, "verdict"):
                    f.attrs["energy_conservation"] = report.verdict
    with open(sim.paths["log"], "a", encoding="utf-8") as log:
        log.write(f"# {status}: {message}\n")
        if report is not None:
            log.write("".join(f"# {line}\n" for line in report.format().splitlines()))
    return MDResult(status=status, message=message, last_step=int(sim.dyn.nsteps), settings=settings,
                    paths=sim.paths, report=report, wall_s=wall,
                    steps_run=int(sim.dyn.nsteps) - steps_before)


def _with_signals(sim: _Simulation, handle_signals: bool):
    """Install SIGINT/SIGTERM handlers that stop the run at the next step boundary."""
    if not handle_signals or threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if sim.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        sim.stop_signal = name

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _execute(sim: _Simulation, handle_signals: bool) -> MDResult:
    previous = _with_signals(sim, handle_signals)
    t_start = time.perf_counter()
    steps_before = sim.dyn.nsteps
    status, message = "crashed", "an unexpected error stopped the run"
    try:
        status, message = sim.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if status == "crashed":  # an exception is on its way up: close the files, keep it
            sim.close(status)
    return _finish(sim, status, message, t_start, steps_before)


def run_md(atoms: Atoms, calculator=None, *, ensemble: str = "nve", timestep_fs: float = 0.5,
           temperature_K: float = 300.0, friction_per_fs: float = 0.01, taut_fs: float = 100.0,
           steps: int = 1000, seed: int | None = None, velocities: str = "maxwell-boltzmann",
           output: str | os.PathLike = "simulation", overwrite: bool = False,
           traj_interval: int = 10, h5_interval: int = 10, log_interval: int = 100,
           flush_every: int = 100, max_drift: float = DEFAULT_MAX_DRIFT,
           metadata: dict | None = None, progress: bool = False,
           handle_signals: bool = False) -> MDResult:
    """Run MD from ``atoms`` and write ``<output>.traj``, ``<output>.h5`` and ``<output>.log``.

    Args:
        atoms: the structure (not modified; the run works on a copy).
        calculator: ASE calculator; None uses ``atoms.calc``.
        ensemble: one of :data:`ENSEMBLES`.
        timestep_fs: fs. temperature_K: K (initial velocities and thermostat target).
        friction_per_fs: Langevin friction, 1/fs. taut_fs: Bussi / Nosé-Hoover time constant, fs.
        steps: total number of steps.
        seed: seeds the one numpy Generator used for initial velocities and the
            thermostat; None draws one (stored in the HDF5 file).
        velocities: "maxwell-boltzmann" or "input" (the momenta stored in ``atoms``).
        output: prefix of the output files.
        overwrite: replace existing outputs; otherwise they make the run refuse.
        traj_interval, h5_interval, log_interval: steps between frames (traj 0: no .traj frames).
        flush_every: HDF5 frames between flushes to disk.
        max_drift: PASS/FAIL threshold of the NVE energy drift, meV/atom/ps.
        metadata: extra run metadata for the HDF5 file (e.g. model file and hash).
        progress: draw a progress line on stdout.
        handle_signals: SIGINT/SIGTERM stop the run at a step boundary and close files.

    Returns:
        :class:`MDResult` (its ``exit_code`` is what the command line returns).
    """
    if seed is None:
        seed = secrets.randbits(63)
    settings = MDSettings(ensemble=ensemble, timestep_fs=float(timestep_fs),
                          temperature_K=float(temperature_K), friction_per_fs=float(friction_per_fs),
                          taut_fs=float(taut_fs), steps=int(steps), seed=int(seed),
                          velocities=velocities, traj_interval=int(traj_interval),
                          h5_interval=int(h5_interval), log_interval=int(log_interval),
                          flush_every=int(flush_every), max_drift_meV_per_atom_per_ps=float(max_drift))
    check_settings(settings, ENSEMBLES, VELOCITY_MODES)
    calculator = calculator if calculator is not None else atoms.calc
    if calculator is None:
        raise ValueError("no calculator: pass one or attach it to atoms.calc")
    atoms = atoms.copy()
    atoms.calc = calculator
    check_structure(atoms, settings.timestep_fs)
    paths = output_paths(output)
    taken = existing_outputs(output)
    if taken and not overwrite:
        raise FileExistsError(f"output files exist: {', '.join(map(str, taken))}; choose another "
                              "--output prefix, pass --overwrite to replace them, or --restart to continue")
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(settings.seed)
    if velocities == "maxwell-boltzmann":
        initialize_velocities(atoms, settings.temperature_K, rng)
    elif not atoms.has("momenta") or not np.any(atoms.get_momenta()):
        if settings.ensemble == "nve":
            raise ValueError("the structure has no velocities to start from; use "
                             "--velocities maxwell-boltzmann")
        atoms.set_momenta(np.zeros((len(atoms), 3)))
    model = getattr(calculator, "model", None)
    cutoff = getattr(model, "cutoff", None)
    meta = {
        **(metadata or {}),
        **{k: v for k, v in asdict(settings).items()},
        "n_atoms": len(atoms),
        "formula": atoms.get_chemical_formula(),
        "versions": _package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "calculator": type(calculator).__name__,
    }
    meta.setdefault("command_line", "")
    if "model_file" not in meta and getattr(model, "source", None):
        meta["model_file"] = str(model.source)
    for key in ("dtype", "device"):
        if key in getattr(calculator, "parameters", {}):
            meta[key] = str(calculator.parameters[key])
    if overwrite:
        for path in taken:
            path.unlink()
    sim = _Simulation(atoms, settings, paths, rng, 0, meta, "w", progress, cutoff)
    _log_header(sim.log, meta, None)
    return _execute(sim, handle_signals)


def restart_md(h5_path: str | os.PathLike, calculator, *, steps: int | None = None,
               max_drift: float | None = None, progress: bool = False,
               handle_signals: bool = False, command_line: str = "") -> MDResult:
    """Continue the run stored in ``h5_path`` from its last checkpoint.

    Positions, momenta, step count, the random-number generator and the
    thermostat state are restored exactly, so a restarted NVE (or seeded
    thermostatted) run repeats the uninterrupted one step for step.

    Args:
        steps: new total number of steps (None: the run's original total).
        max_drift: new NVE threshold, meV/atom/ps (None: the run's).
    """
    paths = output_paths(h5_path)
    state = read_checkpoint(paths["h5"])
    meta = state["metadata"]
    fields = {f: meta[f] for f in MDSettings.__dataclass_fields__ if f in meta}
    settings = MDSettings(**fields)
    if steps is not None:
        settings = replace(settings, steps=int(steps))
    if max_drift is not None:
        settings = replace(settings, max_drift_meV_per_atom_per_ps=float(max_drift))
    check_settings(settings, ENSEMBLES, VELOCITY_MODES)
    start = state["step"]
    if settings.steps <= start:
        raise ValueError(f"{paths['h5']} already reached step {start}; ask for more with --steps "
                         f"(a total larger than {start})")
    atoms = Atoms(numbers=state["numbers"], positions=state["positions"], cell=state["cell"],
                  pbc=state["pbc"])
    atoms.set_momenta(state["momenta"], apply_constraint=False)
    atoms.calc = calculator
    model = getattr(calculator, "model", None)
    if model is not None and hasattr(model, "check_numbers"):
        model.check_numbers(sorted(set(atoms.numbers.tolist())))
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng_state"]
    _truncate_traj(paths["traj"], start, settings.traj_interval)
    new_meta = {"last_restart_step": start}
    if "max_radius_A" in meta:
        new_meta["max_radius_A"] = meta["max_radius_A"]
    if command_line:
        new_meta["restart_command_line"] = command_line
    new_meta["steps"] = settings.steps
    new_meta["max_drift_meV_per_atom_per_ps"] = settings.max_drift_meV_per_atom_per_ps
    sim = _Simulation(atoms, settings, paths, rng, start, new_meta, "a", progress,
                      getattr(model, "cutoff", None))
    sim.h5.truncate_after(start)
    sim.last_recorded = int(sim.h5.frames["step"][-1]) if sim.h5.n_frames else None
    sim.h5.set_attrs(status="running")
    _restore_thermostat(sim.dyn, state["thermostat"])
    _log_header(sim.log, {"command_line": command_line}, start)
    return _execute(sim, handle_signals)


def _truncate_traj(path: Path, step: int, interval: int) -> None:
    """Keep the .traj frames up to ``step`` (frame i holds step i*interval)."""
    if interval <= 0 or not path.exists():
        return
    from ase.io.trajectory import Trajectory

    keep = step // interval + 1
    with Trajectory(str(path)) as traj:
        n = len(traj)
        if n <= keep:
            return
        frames = [traj[i] for i in range(keep)]

    def write(tmp: str) -> None:
        with Trajectory(tmp, "w") as out:
            for atoms in frames:
                out.write(atoms)

    atomic_write(path, write)
