"""Run and restart batched MD: the stages assembled.

    from ase_mlff import MLFFCalculator
    from ase_mlff.md import run_md
    result = run_md([atoms1, atoms2], MLFFCalculator("model.pt"), ensemble="langevin",
                    timestep_fs=0.5, temperature_K=300, friction_per_fs=0.01, steps=10_000, seed=1)
    result = run_md(atoms, calc, replicas=256)      # 256 copies, independent velocities and noise

structures -> :mod:`.state` (batched float64 state) -> :mod:`.velocities` ->
:mod:`.forcefield` (per-system skin lists, one model call) ->
:mod:`.integrators` -> :mod:`.loop` (blow-ups, intervals) -> :mod:`.writers`
(HDF5, .traj, log) -> :mod:`.report`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from .. import units
from ..files import atomic_write, existing
from .barostat import init_barostat
from .forcefield import ForceField
from .h5 import FORMAT_VERSION, read_checkpoint
from .integrators import Integrator, init_thermostat
from .lock import OutputLock
from .loop import Simulation, with_signals
from .noise import system_seeds
from .report import run_report
from .settings import DEFAULTS, ENSEMBLES, VELOCITY_MODES, MDSettings
from .state import MDState, fixed_atoms, max_radius, state_from_atoms
from .validate import check_npt_structure, check_structure
from .velocities import maxwell_boltzmann
from .writers import Outputs, all_paths, output_paths, system_infos

EXIT_BLOWUP = 3
__all__ = ["ENSEMBLES", "VELOCITY_MODES", "MDSettings", "MDResult", "run_md", "restart_md"]


@dataclass
class MDResult:
    """Outcome of a run. ``status``: "completed", "blew-up" (every system) or "interrupted".

    ``systems``: one dict per system (label, n_atoms, status, message, report).
    ``report``: the first system's report (one-system runs).
    """

    status: str
    message: str
    last_step: int
    settings: MDSettings
    paths: dict
    systems: list = field(default_factory=list)
    wall_s: float = 0.0
    steps_run: int = 0
    compile_s: float | None = None

    @property
    def report(self):
        return self.systems[0]["report"] if self.systems else None

    @property
    def n_atoms(self) -> int:
        return sum(s["n_atoms"] for s in self.systems)

    @property
    def exit_code(self) -> int:
        """3 if any system blew up, 130 if interrupted, 1 if an energy check failed, else 0."""
        if self.status == "blew-up" or any(s["status"] == "blew-up" for s in self.systems):
            return EXIT_BLOWUP
        if self.status == "interrupted":
            return 130
        if any(getattr(s["report"], "passed", True) is False for s in self.systems):
            return 1
        return 0


def _package_versions() -> dict:
    import platform

    import ase
    import h5py

    from .._version import __version__

    return {"ase-mlff": __version__, "ase": ase.__version__, "numpy": np.__version__, "h5py": h5py.__version__,
            "torch": torch.__version__, "python": platform.python_version()}


def _as_calculator(calculator):
    from ..calculator import MLFFCalculator
    from ..models import Potential

    if isinstance(calculator, MLFFCalculator):
        return calculator
    if isinstance(calculator, Potential):
        return MLFFCalculator(calculator)
    if calculator is None:
        raise ValueError("no calculator: pass an MLFFCalculator (or attach one to atoms.calc)")
    raise TypeError(f"run_md integrates ase-mlff potentials; got a {type(calculator).__name__}: pass an "
                    "MLFFCalculator or an ase_mlff Potential (for other ASE calculators use ASE's integrators)")


def _force_field(calc, compile: bool | None, n_atoms: int, stress: bool = False) -> ForceField:
    want = bool(getattr(calc, "compile", False)) if compile is None else bool(compile)
    if calc.device.type == "cpu":  # the calculator's size-aware default (see ase_mlff.threads)
        from ..threads import set_threads

        calc.num_threads = set_threads(calc._requested_threads, n_atoms=n_atoms, compiled=want)
    skin = float(calc.parameters.get("skin", 1.0))
    backend = calc.parameters.get("neighbor_backend", "auto")
    evaluator = getattr(calc, "evaluator", None) if want and getattr(calc, "compile", False) else None
    return ForceField(calc.model, skin=skin, backend=backend, compile=want, evaluator=evaluator, dtype=calc.dtype,
                      stress=stress)


def _targets(value, n: int, name: str) -> torch.Tensor:
    values = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)) if np.ndim(value) == 0 else \
        np.asarray(value, dtype=np.float64)
    if values.shape != (n,):
        raise ValueError(f"{name} must be one number or one per system ({n}), got {len(values)}")
    return torch.from_numpy(values.copy())


def _limits(state: MDState, temperature_K: torch.Tensor, cutoff: float) -> None:
    """Blow-up limits per system: far beyond any target temperature; for molecules, atoms that left
    the initial extent by more than a few cutoffs have flown off."""
    th = state.thermostat
    th["max_temperature"] = torch.maximum(10.0 * temperature_K, temperature_K + 5000.0).to(state.device)
    th["first_nonfinite_step"] = torch.full((state.n_systems,), -1, dtype=torch.long, device=state.device)
    th["max_radius"] = max_radius(state) + max(10.0, 2.0 * cutoff)


def _labels(structures, labels):
    if labels is None:
        return ["system 0"] if len(structures) == 1 else [f"system {k}" for k in range(len(structures))]
    labels = list(labels)
    if len(labels) != len(structures):
        raise ValueError(f"got {len(labels)} labels for {len(structures)} structures")
    return labels


def _writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove it takes files (permission bits say nothing to root)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mlff-md-probe-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"cannot write outputs into {folder} ({reason}); choose another --output") from None


def _claim_outputs(paths: dict, overwrite: bool) -> OutputLock:
    """Lock the prefix, then make sure every output is free (or may be replaced); nothing is
    touched before both hold."""
    _writable_folder(paths["h5"].parent)
    lock = OutputLock(paths["lock"])
    lock.acquire()
    try:
        files = all_paths(paths)
        folders = [p for p in files if p.is_dir()]
        if folders:
            raise ValueError(f"output path {folders[0]} is a directory; choose another --output prefix")
        taken = existing(files, overwrite, "output files exist", "choose another --output prefix, pass "
                         "--overwrite to replace them, or --restart to continue")
        for p in taken:
            p.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def run_md(structures: Atoms | Sequence[Atoms], calculator=None, *, ensemble: str = DEFAULTS.ensemble,
           timestep_fs: float = DEFAULTS.timestep_fs, temperature_K=DEFAULTS.temperature_K,
           friction_per_fs=DEFAULTS.friction_per_fs, taut_fs=DEFAULTS.taut_fs, pressure_bar=DEFAULTS.pressure_bar,
           taup_fs=DEFAULTS.taup_fs, compressibility_per_bar=DEFAULTS.compressibility_per_bar,
           cell_dof: str = DEFAULTS.cell_dof, steps: int = DEFAULTS.steps,
           seed: int | None = None, velocities: str = DEFAULTS.velocities, replicas: int = 1,
           labels: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
           output: str | os.PathLike = "simulation", overwrite: bool = False,
           traj_interval: int = DEFAULTS.traj_interval, h5_interval: int = DEFAULTS.h5_interval,
           log_interval: int = DEFAULTS.log_interval, flush_every: int = DEFAULTS.flush_every,
           max_drift: float | None = None, compile: bool | None = None, metadata: dict | None = None,
           progress: bool = False, handle_signals: bool = False) -> MDResult:
    """Run MD for one or many structures together and write their outputs.

    Args:
        structures: one Atoms or a list (mixed sizes, molecules and periodic cells); not modified.
        calculator: :class:`~ase_mlff.MLFFCalculator` or an ase_mlff ``Potential``; None
            uses the first structure's ``calc``. Its device, dtype, skin and compile setting apply.
        ensemble: one of :data:`ENSEMBLES`.
        timestep_fs: fs. temperature_K: K, one value or one per system (initial velocities
            and thermostat target). friction_per_fs: Langevin friction, 1/fs (one or per system).
        taut_fs: Bussi / Nosé-Hoover time constant, fs (one or per system); also NPT's thermostat.
        pressure_bar: NPT target pressure, bar (one or per system; negative allowed).
        taup_fs: NPT barostat time constant, fs (one or per system).
        compressibility_per_bar: the compressibility β_T the barostat assumes, 1/bar (one or per
            system); it sets the barostat's rate with ``taup_fs``, not the volume distribution.
        cell_dof: NPT cell degrees of freedom: "isotropic" (volume only), "anisotropic" (three
            lengths) or "triclinic" (the six components of a symmetric deformation); see
            :mod:`ase_mlff.md.barostat`.
        steps: total number of steps.
        seed: run seed; system k's noise seed is derived from (seed, k) unless ``seeds`` gives
            them. None draws one (stored in the HDF5 file).
        velocities: "maxwell-boltzmann" or "input" (the momenta stored in each Atoms).
        replicas: run this many copies of each structure, each with its own velocities and noise.
        labels: one name per system (default "system k"), used in messages and the HDF5 file.
        output: prefix of the output files (``.h5``, ``.log``, ``.traj`` or ``.<k>.traj``).
        overwrite: replace existing outputs; otherwise they make the run refuse.
        traj_interval, h5_interval, log_interval: steps between frames (traj 0: no .traj frames).
        flush_every: HDF5 frames between flushes to disk.
        max_drift: NVE PASS/FAIL threshold, meV/atom/ps (None: the default).
        compile: evaluate the network with ``torch.compile`` (None: as the calculator says).
        metadata: extra run metadata for the HDF5 file (e.g. model file and hash).
        progress: draw a progress line on stdout.
        handle_signals: SIGINT/SIGTERM stop the run at a step boundary and close files.

    Returns:
        :class:`MDResult` (its ``exit_code`` is what the command line returns).
    """
    structures = [structures] if isinstance(structures, Atoms) else list(structures)
    if not structures:
        raise ValueError("run_md needs at least one structure")
    if not (isinstance(replicas, (int, np.integer)) and replicas >= 1):
        raise ValueError(f"replicas must be a positive integer, got {replicas}")
    calc = _as_calculator(calculator if calculator is not None else structures[0].calc)
    if seed is None:
        seed = secrets.randbits(63)
    extra = {} if max_drift is None else {"max_drift_meV_per_atom_per_ps": float(max_drift)}
    settings = MDSettings(ensemble=ensemble, timestep_fs=timestep_fs, temperature_K=float(np.mean(temperature_K)),
                          friction_per_fs=float(np.mean(friction_per_fs)), taut_fs=float(np.mean(taut_fs)),
                          pressure_bar=float(np.mean(pressure_bar)), taup_fs=float(np.mean(taup_fs)),
                          compressibility_per_bar=float(np.mean(compressibility_per_bar)), cell_dof=cell_dof,
                          steps=int(steps), seed=int(seed), velocities=velocities, traj_interval=int(traj_interval),
                          h5_interval=int(h5_interval), log_interval=int(log_interval),
                          flush_every=int(flush_every), **extra)
    labels = _labels(structures, labels)
    if replicas > 1:
        labels = [f"{label} replica {r}" for label in labels for r in range(replicas)]
        structures = [a for a in structures for _ in range(replicas)]
    n = len(structures)
    structures = [a.copy() for a in structures]
    model = calc.model
    for atoms, label in zip(structures, labels):
        prefix = f"{label}: " if n > 1 else ""
        try:
            check_structure(atoms, settings.timestep_fs)
            if settings.ensemble == "npt":
                check_npt_structure(atoms)
            model.check_numbers(sorted(set(atoms.numbers.tolist())))
            calc.warn_outside_training(atoms)  # OutOfTrainingWarning, once per composition
            fixed_atoms(atoms, "")
        except ValueError as error:
            raise ValueError(f"{prefix}{error}") from None
        if velocities == "input" and (not atoms.has("momenta") or not np.any(atoms.get_momenta())) \
                and settings.ensemble == "nve":
            raise ValueError(f"{prefix}the structure has no velocities to start from; use "
                             "--velocities maxwell-boltzmann")
    seeds = system_seeds(settings.seed, n) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} systems")
    temperature = _targets(temperature_K, n, "temperature_K")
    friction = _targets(friction_per_fs, n, "friction_per_fs") / units.fs
    taut = _targets(taut_fs, n, "taut_fs") * units.fs
    pressure = _targets(pressure_bar, n, "pressure_bar")
    taup = _targets(taup_fs, n, "taup_fs")
    compressibility = _targets(compressibility_per_bar, n, "compressibility_per_bar")
    for name, values, positive in (("pressure_bar", pressure, False), ("taup_fs", taup, True),
                                   ("compressibility_per_bar", compressibility, True)):
        bad = ~torch.isfinite(values) | ((values <= 0) if positive else torch.zeros_like(values, dtype=torch.bool))
        if bool(bad.any()):
            k = int(torch.nonzero(bad)[0])
            raise ValueError(f"{name} of system {k} is {float(values[k])}; it must be finite"
                             + (" and positive" if positive else ""))

    paths = output_paths(output, n)
    lock = _claim_outputs(paths, overwrite)
    try:
        state = state_from_atoms(structures, calc.device, seeds, labels)
        _start_velocities(state, structures, settings, temperature)
        init_thermostat(state, settings.ensemble, units.kB * temperature.to(calc.device),
                        friction.to(calc.device), taut.to(calc.device))
        _limits(state, temperature, model.cutoff)
        if settings.ensemble == "npt":
            init_barostat(state, (pressure * units.bar).to(calc.device), (taup * units.fs).to(calc.device),
                          (compressibility / units.bar).to(calc.device))
        force_field = _force_field(calc, compile, int(state.positions.shape[0]), settings.ensemble == "npt")
        compiles_now = not getattr(force_field.evaluator, "ready", True)
        force_field(state)  # a compiled model compiles here, before the timed loop
        meta = {**(metadata or {}), **settings.as_dict(), "n_systems": n,
                "n_atoms": int(sum(len(a) for a in structures)),
                "formula": structures[0].get_chemical_formula() if n == 1 else f"{n} systems",
                "versions": _package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "calculator": type(calc).__name__, "dtype": str(calc.parameters.get("dtype")),
                "device": str(calc.device), "compile": bool(force_field.evaluator is not model),
                "noise": "splitmix64 counter streams (ase_mlff.md.noise)"}
        meta.setdefault("command_line", "")
        if "model_file" not in meta and getattr(model, "source", None):
            meta["model_file"] = str(model.source)
        attrs = [{"formula": a.get_chemical_formula(), "temperature_K": float(t), "max_radius_A": float(r)}
                 for a, t, r in zip(structures, temperature.tolist(), state.thermostat["max_radius"].tolist())]
        if settings.ensemble == "npt":
            for a, p in zip(attrs, pressure.tolist()):
                a["pressure_bar"] = float(p)
        infos = system_infos(structures, labels, [fixed_atoms(a, lab) for a, lab in zip(structures, labels)],
                             state.dof.tolist(), seeds, attrs)
        templates = [_template(a) for a in structures]
        outputs = Outputs(paths, templates, infos, meta, settings, "w", settings.timestep_fs)
        outputs.log_header(meta, None)
        sim = Simulation(state, force_field, _integrator(settings), settings, outputs, labels, progress)
        sim.observe()  # step 0
        sim.compile_s = force_field.evaluator.seconds if compiles_now else None
        return _execute(sim, handle_signals, paths, settings)
    finally:
        lock.release()


def _integrator(settings: MDSettings) -> Integrator:
    return Integrator(settings.ensemble, settings.timestep_fs * units.fs, settings.cell_dof)


def _template(atoms: Atoms) -> Atoms:
    template = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    template.set_masses(atoms.get_masses())
    template.set_momenta(np.zeros((len(atoms), 3)), apply_constraint=False)
    template.set_constraint([c.copy() for c in atoms.constraints])
    return template


def _start_velocities(state: MDState, structures, settings: MDSettings, temperature: torch.Tensor) -> None:
    conserving = settings.ensemble != "langevin"
    if settings.velocities == "maxwell-boltzmann":
        maxwell_boltzmann(state, temperature.to(state.device), zero_momentum=conserving)
        return
    momenta = np.concatenate([a.get_momenta() if a.has("momenta") else np.zeros((len(a), 3)) for a in structures])
    state.momenta = torch.from_numpy(momenta).to(state.device) * state.free.unsqueeze(1)


def _execute(sim: Simulation, handle_signals: bool, paths: dict, settings: MDSettings) -> MDResult:
    previous = with_signals(sim, handle_signals)
    start = time.perf_counter()
    steps_before = sim.state.step
    status, message = "crashed", "an unexpected error stopped the run"
    try:
        status, message = sim.run()
    finally:
        for sig, old in previous.items():
            import signal

            signal.signal(sig, old)
        if status == "crashed":  # an exception is on its way up: close the files, keep it
            sim.close(status)
    wall = time.perf_counter() - start
    last_step = int(sim.state.step)
    sim.outputs.h5.flush()  # every frame on disk before the reports read them
    systems = _reports(sim.outputs.h5, sim, settings, status)
    sim.close(status)
    with open(paths["log"], "a", encoding="utf-8") as log:
        log.write(f"# {status}: {message}\n")
        for s in systems:
            if s["report"] is not None:
                head = f"# {s['label']}: " if len(systems) > 1 else "# "
                log.write("".join(f"{head}{line}\n" for line in s["report"].format().splitlines()))
    return MDResult(status=status, message=message, last_step=last_step, settings=settings, paths=paths,
                    systems=systems, wall_s=wall, steps_run=last_step - steps_before,
                    compile_s=getattr(sim, "compile_s", None))


def _reports(writer, sim: Simulation, settings: MDSettings, status: str) -> list[dict]:
    """Per-system reports of a finished run, written by the HDF5 writer under /systems/<k>/report."""
    systems, verdicts = [], []
    for k, group in enumerate(writer.systems):
        frames = group["frames"]
        entry = {"label": str(group.attrs["label"]), "n_atoms": int(group.attrs["n_atoms"]),
                 "status": sim.status.get(k, str(group.attrs.get("status"))), "message": sim.messages.get(k, ""),
                 "report": None, "note": ""}
        if status == "completed" and entry["status"] in ("running", "completed"):
            try:
                report = run_report(settings.ensemble, frames, entry["n_atoms"], float(group.attrs["temperature_K"]),
                                    settings.max_drift_meV_per_atom_per_ps, group.attrs.get("pressure_bar"),
                                    float(np.sum(group["masses"][()])))
            except ValueError as error:  # too few frames to judge
                entry["note"] = f"no report: {error}"
            else:
                entry["report"] = report
                writer.write_report(k, report.as_dict())
                if hasattr(report, "verdict"):
                    writer.set_system_attrs(k, energy_conservation=report.verdict)
                    verdicts.append(report.verdict)
        systems.append(entry)
    if verdicts:
        writer.set_attrs(energy_conservation="FAIL" if "FAIL" in verdicts else
                         "PASS" if all(v == "PASS" for v in verdicts) else "UNDECIDED")
    return systems


def restart_md(h5_path: str | os.PathLike, calculator, *, steps: int | None = None,
               max_drift: float | None = None, compile: bool | None = None, progress: bool = False,
               handle_signals: bool = False, command_line: str = "") -> MDResult:
    """Continue the run stored in ``h5_path`` from its last checkpoint.

    Positions, momenta, masses, fixed atoms, step count and thermostat state
    are restored exactly, and noise is a function of the step, so a
    restarted run repeats the uninterrupted one bit for bit.

    Args:
        steps: new total number of steps (None: the run's original total).
        max_drift: new NVE threshold, meV/atom/ps (None: the run's).
    """
    from .h5 import n_systems

    h5_path = Path(h5_path)
    calc = _as_calculator(calculator)
    count = n_systems(h5_path)
    notes = []
    paths = output_paths(h5_path, count)
    paths["h5"] = h5_path
    lock = OutputLock(paths["lock"])
    lock.acquire()
    try:
        state_dict = read_checkpoint(h5_path)
        if state_dict["version"] < 2:
            from .h5 import upgrade_version_1

            backup = upgrade_version_1(h5_path)
            notes.append(f"upgraded {h5_path} from format version 1 to {FORMAT_VERSION} (original kept as {backup})")
            state_dict = read_checkpoint(h5_path)
        meta = state_dict["metadata"]
        settings = MDSettings.from_metadata(meta)
        if steps is not None:
            settings = replace(settings, steps=int(steps))
        if max_drift is not None:
            settings = replace(settings, max_drift_meV_per_atom_per_ps=float(max_drift))
        start = state_dict["step"]
        if settings.steps <= start:
            raise ValueError(f"{h5_path} already reached step {start}; ask for more with --steps "
                             f"(a total larger than {start})")
        active = [int(k) for k in state_dict["systems"]]
        structures, labels_active = [], []
        for numbers, masses, cell, pbc, fixed, attrs in zip(
                state_dict["numbers"], state_dict["masses"], state_dict["cell"], state_dict["pbc"],
                state_dict["fixed"], state_dict["system_attrs"]):
            atoms = Atoms(numbers=numbers, cell=cell, pbc=pbc, positions=np.zeros((len(numbers), 3)))
            atoms.set_masses(masses)
            if len(fixed):
                from ase.constraints import FixAtoms

                atoms.set_constraint(FixAtoms(indices=fixed))
            structures.append(atoms)
            labels_active.append(str(attrs.get("label", "system")))
        calc.model.check_numbers(sorted({int(z) for a in structures for z in a.numbers}))
        seeds = [int(a["seed"]) for a in state_dict["system_attrs"]]
        state = state_from_atoms(structures, calc.device, seeds, labels_active)
        state.positions = torch.from_numpy(state_dict["positions"]).to(calc.device)
        state.momenta = torch.from_numpy(state_dict["momenta"]).to(calc.device)
        state.dof = torch.tensor([float(a["dof"]) for a in state_dict["system_attrs"]], dtype=torch.float64,
                                 device=calc.device)
        state.system_id = torch.tensor(active, device=calc.device)
        state.thermostat = {k: torch.from_numpy(np.asarray(v)).to(calc.device)
                            for k, v in state_dict["thermostat"].items()}
        state.thermostat.setdefault("first_nonfinite_step", torch.full((len(active),), -1, dtype=torch.long,
                                                                        device=calc.device))
        if state_dict.get("checkpoint_cell") is not None:  # NPT: the cell of the checkpoint
            state.cell = torch.from_numpy(state_dict["checkpoint_cell"]).to(calc.device)
        state.step = start
        force_field = _force_field(calc, compile, int(state.positions.shape[0]), settings.ensemble == "npt")
        compiles_now = not getattr(force_field.evaluator, "ready", True)
        force_field(state)
        for k in active:
            if settings.traj_interval > 0:
                _truncate_traj(paths["traj"][k], start, settings.traj_interval)
        _truncate_log(paths["log"], start)
        new_meta = {"last_restart_step": start, "steps": settings.steps,
                    "max_drift_meV_per_atom_per_ps": settings.max_drift_meV_per_atom_per_ps}
        if command_line:
            new_meta["restart_command_line"] = command_line
        from .h5 import read_frames

        templates = []
        for k in range(count):
            if k in active:
                templates.append(_template(structures[active.index(k)]))
            else:  # stopped before the checkpoint: its files are final
                frames = read_frames(h5_path, slice(0, 1), system=k)
                templates.append(_template(frames[0]) if frames else Atoms())
        outputs = Outputs(paths, templates, None, new_meta, settings, "a", settings.timestep_fs)
        outputs.h5.truncate_after(start, active)
        for k in active:
            outputs.h5.set_system_attrs(k, status="running")
            steps_k = outputs.h5.frames[k].group["step"]
            if steps_k.shape[0]:
                outputs.last_recorded[k] = int(steps_k[-1])
        outputs.h5.set_attrs(status="running")
        outputs.log_header({"command_line": command_line}, start)
        for note in notes:
            outputs.note(note)
        all_labels = [str(outputs.h5.systems[k].attrs["label"]) for k in range(count)]
        sim = Simulation(state, force_field, _integrator(settings), settings, outputs, all_labels, progress)
        sim.compile_s = force_field.evaluator.seconds if compiles_now else None
        for k in range(count):
            if k not in active:
                sim.status[k] = str(outputs.h5.systems[k].attrs.get("status", "blew-up"))
                sim.messages[k] = str(outputs.h5.systems[k].attrs.get("message", ""))
        return _execute(sim, handle_signals, paths, settings)
    finally:
        lock.release()


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


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after ``step`` (written after the checkpoint a restart continues)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

    def keep(line: str) -> bool:
        fields = line.split()
        return line.startswith("#") or not fields or not fields[0].isdigit() or int(fields[0]) <= step

    kept = [line for line in lines if keep(line)]
    if len(kept) != len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept), encoding="utf-8"))
