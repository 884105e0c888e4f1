"""``mlff-md run | report | convert``: the command line over :mod:`ase_mlff.md.driver`.

User errors end in one line (click's ``Error: ...``) and a non-zero exit code,
never a traceback. Exit codes: 0 done (and NVE check passed), 1 NVE energy
check failed or bad input (2 for usage errors), 3 the simulation blew up,
130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
import warnings
from pathlib import Path

import click

from ..training.cli import _check_output_file
from .driver import ENSEMBLES, EXIT_BLOWUP, VELOCITY_MODES
from .settings import CELL_DOFS, DEFAULTS


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _frames_spec(spec: str) -> tuple[Path, str | None]:
    """(file, index text) of ``file`` or ``file@index``."""
    path = Path(spec)
    if not path.exists() and "@" in spec:
        head, index = spec.rsplit("@", 1)
        return Path(head), index
    return path, None


def read_structures(spec: str) -> list[tuple[str, object]]:
    """[(label, Atoms)] from ``file``, ``file@index`` or ``file@slice`` (any format ASE reads).

    ``file`` alone is the frame ``ase.io.read`` gives (the last); ``file@:``
    selects every frame, each becoming a system labelled ``file@k``.
    """
    import ase.io
    from ase.io.formats import string2index

    path, index = _frames_spec(spec)
    if not path.exists():
        raise click.ClickException(f"structure file {path} does not exist; give a file ASE can read "
                                   "(xyz, extxyz, cif, POSCAR, pdb, traj, ...)")
    if path.is_dir():
        raise click.ClickException(f"{path} is a directory; give a structure file")
    try:
        selection = string2index(index) if index is not None else 0
        if isinstance(selection, str):  # ASE passes non-numbers on as database queries
            raise ValueError(index)
    except ValueError:
        raise click.ClickException(f"{spec}: {index!r} is not a frame index or slice; write e.g. "
                                   f"{path}@0, {path}@-1 or {path}@: (every frame)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # format readers warn about many harmless things
            atoms = ase.io.read(path, index=selection) if index is not None else ase.io.read(path)
    except (StopIteration, IndexError):
        raise click.ClickException(f"{spec}: frame {index} does not exist in {path}; "
                                   f"count its frames with ase info {path}") from None
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise click.ClickException(
            f"could not read a structure from {spec} ({type(error).__name__}: {first}); give a file "
            "ASE can read (xyz, extxyz, cif, POSCAR, pdb, traj) and a frame as file.traj@-1") from None
    if isinstance(atoms, list):
        if not atoms:
            raise click.ClickException(f"{spec} selects no frames")
        start = selection.indices(10**12)[0] if isinstance(selection, slice) else 0
        step = selection.step or 1 if isinstance(selection, slice) else 1
        if start < 0 or (selection.start is not None and selection.start < 0):
            labels = [f"{path}@{spec.rsplit('@', 1)[1]}[{k}]" for k in range(len(atoms))]
        else:
            labels = [f"{path}@{start + k * step}" for k in range(len(atoms))]
        structures = list(zip(labels, atoms))
    else:
        structures = [(spec, atoms)]
    for label, a in structures:
        if len(a) == 0:
            raise click.ClickException(f"{label} contains no atoms")
    return structures


def read_structure(spec: str):
    """One Atoms from ``file`` or ``file@index``."""
    structures = read_structures(spec)
    if len(structures) > 1:
        raise click.ClickException(f"{spec} selects {len(structures)} frames; choose one, e.g. "
                                   f"{_frames_spec(spec)[0]}@-1")
    return structures[0][1]


def _calculator(model: str | None, numbers, device: str, dtype: str, threads: int | None,
                compile: bool = False, compositions=None):
    """(calculator, model path, name shown to the user); ``compositions``: one per structure."""
    from ..bundled import resolve_model_path
    from ..calculator import MLFFCalculator
    from .selection import choose_potential

    try:
        if model is None:
            name, path = choose_potential(numbers, compositions)
            label = f"bundled potential {name} ({path})"
        else:
            path = resolve_model_path(model)
            label = str(path) if Path(model).exists() else f"bundled potential {model} ({path})"
        calculator = MLFFCalculator(path, device=device, dtype=dtype, num_threads=threads, compile=compile)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    try:
        calculator.model.check_numbers(sorted({int(z) for z in numbers}))
    except ValueError as error:
        raise click.ClickException(f"{label}: {error}") from None
    return calculator, Path(path), label


def calculator_for(structures, model: str | None, device: str, dtype: str, threads: int | None,
                   compile: bool = False):
    """``_calculator`` for the structures of a command; says which bundled potential it chose."""
    from ..compositions import composition

    numbers = sorted({int(z) for a in structures for z in a.numbers})
    calculator, path, label = _calculator(model, numbers, device, dtype, threads, compile,
                                          [composition(a) for a in structures])
    if model is None:
        click.echo(f"using {label}")
    return calculator, path, label


def _echo_result(result, quiet: bool) -> None:
    if result.compile_s is not None:
        click.echo(f"compiled the model in {result.compile_s:.1f} s (before the first step, not in the time below)")
    if result.steps_run:
        rate = result.steps_run / result.wall_s if result.wall_s > 0 else float("nan")
        summary, _, note = result.message.partition("\n")
        many = len(result.systems) > 1
        extra = f", {rate * result.n_atoms:.4g} atom-steps/s" if many else ""
        if result.status == "completed":
            click.echo(f"{summary if not many else f'completed {result.settings.steps} steps'} in "
                       f"{result.wall_s:.1f} s ({rate:.1f} steps/s{extra})" + (f"\n{note}" if note else ""))
    if len(result.systems) == 1:
        system = result.systems[0]
        if system["note"]:
            click.echo(system["note"])
        if system["report"] is not None:
            click.echo(system["report"].format())
    elif result.systems:
        click.echo(_summary_table(result))
    traj = result.paths["traj"]
    shown = [str(result.paths["h5"]), str(result.paths["log"])]
    if result.settings.traj_interval > 0:
        shown.insert(0, str(traj[0]) if len(traj) == 1 else f"{traj[0]} ... {traj[-1]} ({len(traj)} files)")
    click.echo("outputs: " + ", ".join(shown))


def _summary_table(result) -> str:
    """One line per system: status and energy-conservation or temperature figures."""
    nve = result.settings.ensemble in ("nve", "npt")  # NPT is judged on its effective energy
    width = max(6, *(len(s["label"]) for s in result.systems))
    head = (f"{'system':<{width}} {'atoms':>6} {'status':<10} "
            + (f"{'drift[meV/atom/ps]':>19} {'verdict':<9}" if nve else f"{'T_mean[K]':>10} {'T_std[K]':>9}"))
    lines = [head]
    counts: dict[str, int] = {}
    for s in result.systems:
        report = s["report"]
        if report is None:
            figures = s["note"] or s["message"]
        elif nve:
            figures = f"{report.drift_meV_per_atom_per_ps:>+19.4g} {report.verdict:<9}"
        else:
            figures = f"{report.mean_K:>10.2f} {report.std_K:>9.2f}"
        key = report.verdict if (report is not None and nve) else s["status"]
        counts[key] = counts.get(key, 0) + 1
        lines.append(f"{s['label']:<{width}} {s['n_atoms']:>6d} {s['status']:<10} {figures}")
    lines.append("summary: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)


@click.command("run")
@click.argument("structures", nargs=-1)
@click.option("-m", "--model", help="Model file or bundled potential name [default: a bundled "
              "potential covering the structures' elements].")
@click.option("--ensemble", type=click.Choice(ENSEMBLES), default=DEFAULTS.ensemble, show_default=True)
@click.option("--timestep-fs", type=float, default=DEFAULTS.timestep_fs, show_default=True, help="Timestep in fs.")
@click.option("--temperature", "temperature_K", type=float, default=DEFAULTS.temperature_K, show_default=True,
              help="Initial (Maxwell-Boltzmann) and thermostat temperature in K.")
@click.option("--friction", "friction_per_fs", type=float, default=DEFAULTS.friction_per_fs, show_default=True,
              help="Langevin friction in 1/fs.")
@click.option("--taut-fs", type=float, default=DEFAULTS.taut_fs, show_default=True,
              help="Bussi / Nosé-Hoover time constant in fs (also the thermostat of npt).")
@click.option("--pressure-bar", type=float, default=DEFAULTS.pressure_bar, show_default=True,
              help="NPT target pressure in bar (negative: tension).")
@click.option("--taup-fs", type=float, default=DEFAULTS.taup_fs, show_default=True,
              help="NPT barostat (stochastic cell rescaling) time constant in fs.")
@click.option("--compressibility-per-bar", type=float, default=DEFAULTS.compressibility_per_bar,
              show_default=True, help="Compressibility the barostat assumes, 1/bar (sets its rate, not the "
              "volume distribution; water: 4.5e-5).")
@click.option("--cell-dof", type=click.Choice(CELL_DOFS), default=DEFAULTS.cell_dof, show_default=True,
              help="NPT cell degrees of freedom: volume only, three lengths, or a full symmetric deformation.")
@click.option("--steps", type=int, default=None, help=f"Total number of steps [default: {DEFAULTS.steps}; "
              "with --restart, the original run's total].")
@click.option("--replicas", type=int, default=1, show_default=True,
              help="Copies of each structure, with independent velocities and thermostat noise.")
@click.option("--seed", type=int, default=None, help="Random seed (velocities and thermostat); "
              "the same seed repeats a run bit for bit on the same machine [default: drawn, stored].")
@click.option("--velocities", type=click.Choice(VELOCITY_MODES), default=DEFAULTS.velocities,
              show_default=True, help="Initial velocities: sampled at --temperature, or those in "
              "the structure file.")
@click.option("-o", "--output", default="simulation", show_default=True,
              help="Prefix of the output files (.traj, .h5, .log; .<k>.traj per system when there are many).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--restart", type=click.Path(dir_okay=False), default=None,
              help="Continue the run stored in this HDF5 file (its settings are reused).")
@click.option("--traj-interval", type=int, default=DEFAULTS.traj_interval, show_default=True,
              help="Steps between .traj frames (0: none).")
@click.option("--h5-interval", type=int, default=DEFAULTS.h5_interval, show_default=True,
              help="Steps between HDF5 frames.")
@click.option("--log-interval", type=int, default=DEFAULTS.log_interval, show_default=True,
              help="Steps between log lines.")
@click.option("--flush-every", type=int, default=DEFAULTS.flush_every, show_default=True,
              help="HDF5 frames between flushes to disk (also flushed every 30 s).")
@click.option("--max-drift", type=float, default=DEFAULTS.max_drift_meV_per_atom_per_ps, show_default=True,
              help="NVE energy drift threshold in meV/atom/ps for PASS/FAIL.")
@click.option("--compile", "compile_model", is_flag=True,
              help="Evaluate the model with torch.compile (a few seconds to compile, faster steps).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: by system size].")
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
@click.pass_context
def run(ctx, structures, model, ensemble, timestep_fs, temperature_K, friction_per_fs, taut_fs, pressure_bar,
        taup_fs, compressibility_per_bar, cell_dof, steps, replicas, seed, velocities, output, overwrite, restart,
        traj_interval, h5_interval, log_interval,
        flush_every, max_drift, compile_model, device, dtype, threads, quiet):
    """Run molecular dynamics on STRUCTURES (files, file@frame or file@slice), all in one batch.

    \b
    mlff-md run ethanol.xyz --steps 10000
    mlff-md run ethanol.xyz --replicas 256 --ensemble langevin
    mlff-md run water.xyz --ensemble npt --pressure-bar 1 --taup-fs 1000
    mlff-md run a.xyz b.cif frames.extxyz@: -m model.pt
    mlff-md run --restart simulation.h5 --steps 20000
    """
    from ..compositions import OutOfTrainingWarning
    from .driver import run_md
    from .validate import MDWarning, check_structure

    command_line = shlex.join(["mlff-md", *sys.argv[1:]]) if sys.argv else "mlff-md run"
    progress = not quiet and sys.stdout.isatty()
    if steps is not None and steps <= 0:
        raise click.BadParameter(f"must be a positive number of steps, got {steps}", param_hint="--steps")
    if not timestep_fs > 0 or timestep_fs == float("inf"):
        raise click.BadParameter(f"must be a finite positive number, got {timestep_fs} fs; 0.5 fs is safe "
                                 "with hydrogen", param_hint="--timestep-fs")
    if not max_drift >= 0:
        raise click.BadParameter(f"must be a number >= 0 meV/atom/ps, got {max_drift}", param_hint="--max-drift")
    if replicas < 1:
        raise click.BadParameter(f"must be at least 1, got {replicas}", param_hint="--replicas")
    if restart is not None:
        result = _restart(restart, structures, model, steps, max_drift, ctx, device, dtype, threads,
                          progress, command_line, compile_model)
    else:
        if not structures:
            raise click.UsageError("give one or more STRUCTURE files (or --restart FILE.h5)")
        systems = [pair for spec in structures for pair in read_structures(spec)]
        labels = [label for label, _ in systems]
        atoms_list = [atoms for _, atoms in systems]
        calculator, model_path, label = calculator_for(atoms_list, model, device, dtype, threads, compile_model)
        try:
            shown = set()
            for name, atoms in systems:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", MDWarning)
                    warnings.simplefilter("always", OutOfTrainingWarning)
                    try:
                        check_structure(atoms, timestep_fs)
                    except ValueError as error:
                        raise ValueError(f"{name}: {error}" if len(systems) > 1 else str(error)) from None
                    calculator.warn_outside_training(atoms)  # once per composition
                for w in caught:
                    if issubclass(w.category, (MDWarning, OutOfTrainingWarning)) and str(w.message) not in shown:
                        shown.add(str(w.message))
                        where = f"{name}: " if len(systems) > 1 and w.category is OutOfTrainingWarning else ""
                        click.echo(f"Warning: {where}{w.message}", err=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MDWarning)  # already shown
                warnings.simplefilter("ignore", OutOfTrainingWarning)
                result = run_md(
                    atoms_list, calculator, ensemble=ensemble, timestep_fs=timestep_fs,
                    temperature_K=temperature_K, friction_per_fs=friction_per_fs, taut_fs=taut_fs,
                    pressure_bar=pressure_bar, taup_fs=taup_fs, compressibility_per_bar=compressibility_per_bar,
                    cell_dof=cell_dof, steps=DEFAULTS.steps if steps is None else steps, seed=seed,
                    velocities=velocities,
                    replicas=replicas, labels=labels if len(labels) > 1 or replicas > 1 else None,
                    output=output, overwrite=overwrite, traj_interval=traj_interval,
                    h5_interval=h5_interval, log_interval=log_interval, flush_every=flush_every,
                    max_drift=max_drift, progress=progress, handle_signals=True,
                    metadata={"command_line": command_line, "model_file": str(model_path),
                              "model_sha256": _sha256(model_path), "model_label": label,
                              "structure_file": list(structures) if len(structures) > 1 else structures[0]})
        except (ValueError, FileExistsError, FileNotFoundError, PermissionError) as error:
            raise click.ClickException(str(error)) from None
    _echo_result(result, quiet)
    _exit(ctx, result)


def _exit(ctx, result) -> None:
    if result.status == "blew-up":
        raise _blowup_exit(result.message)
    if result.status == "interrupted":
        click.echo(result.message, err=True)
        ctx.exit(143 if "SIGTERM" in result.message else 130)
    failed = [s for s in result.systems if s["status"] == "blew-up"]
    if failed:
        raise _blowup_exit(f"{len(failed)} of {len(result.systems)} systems blew up: "
                           + "; ".join(s["message"] for s in failed[:3]) + (" ..." if len(failed) > 3 else ""))
    if result.exit_code:
        ctx.exit(1)


def _blowup_exit(message: str):
    error = click.ClickException(message)
    error.exit_code = EXIT_BLOWUP
    return error


#: options fixed by the original run (a restart reads them from the HDF5 file)
_RUN_SETTINGS = ("ensemble", "timestep_fs", "temperature_K", "friction_per_fs", "taut_fs", "pressure_bar",
                 "taup_fs", "compressibility_per_bar", "cell_dof", "seed",
                 "velocities", "output", "overwrite", "traj_interval", "h5_interval", "log_interval",
                 "flush_every", "replicas")


def _restart(restart, structures, model, steps, max_drift, ctx, device, dtype, threads, progress,
             command_line, compile_model):
    from ..bundled import resolve_model_path
    from .driver import restart_md
    from .h5 import read_metadata

    if structures:
        raise click.UsageError("--restart continues from the HDF5 file; do not give a STRUCTURE too")
    flags = {p.name: max(p.opts, key=len) for p in ctx.command.params}
    fixed = [flags[name] for name in _RUN_SETTINGS
             if ctx.get_parameter_source(name) is not None
             and ctx.get_parameter_source(name).name == "COMMANDLINE"]
    if fixed:
        raise click.UsageError(f"--restart reuses the settings stored in the run's file; drop "
                               f"{', '.join(fixed)} (only --steps, --max-drift, -m, --device, --dtype, "
                               "--threads, --compile and --quiet apply)")
    try:
        meta = read_metadata(restart)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    if model is None:
        model = meta.get("model_file")
        if not isinstance(model, str) or not Path(model).exists():
            raise click.ClickException(f"the model of this run ({model}) is not available; give it with -m/--model")
    try:
        model_path = resolve_model_path(model)
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    stored = meta.get("model_sha256")
    if stored and _sha256(model_path) != stored:
        raise click.ClickException(f"{model_path} is not the model this run started with (its sha256 "
                                   "differs); give the original model with -m/--model")
    if "dtype" in meta and ctx.get_parameter_source("dtype").name == "DEFAULT":
        dtype = str(meta["dtype"])  # the run's own precision, unless asked otherwise
    calculator, _, _ = _calculator(str(model_path), [], device, dtype, threads, compile_model)
    source = ctx.get_parameter_source("max_drift")
    explicit = source is not None and source.name != "DEFAULT"
    try:
        return restart_md(restart, calculator, steps=steps, max_drift=max_drift if explicit else None,
                          progress=progress, handle_signals=True, command_line=command_line)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None


@click.command("report")
@click.argument("h5file", type=click.Path(dir_okay=False))
@click.option("--system", type=int, default=None, help="Report one system of a many-system run [default: all].")
@click.option("--max-drift", type=float, default=None,
              help="NVE drift threshold in meV/atom/ps [default: the run's].")
@click.option("--plot", "png", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of energies and temperature against time (of --system, default 0).")
def report(h5file, system, max_drift, png):
    """Energy conservation (NVE; NPT: of the effective energy, with pressure and density) or
    temperature statistics of a run's HDF5 file."""
    from .h5 import n_systems, read_metadata, read_system_attrs
    from .report import plot, report_from_h5

    if max_drift is not None and not max_drift >= 0:
        raise click.BadParameter(f"must be a number >= 0 meV/atom/ps, got {max_drift}", param_hint="--max-drift")
    if png:
        _check_output_file(png, "--plot")
    try:
        meta = read_metadata(h5file)
        count = n_systems(h5file)
        chosen = range(count) if system is None else [system]
        results = []
        for k in chosen:
            results.append((k, read_system_attrs(h5file, k), report_from_h5(h5file, max_drift, system=k)))
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    status = meta.get("status", "?")
    click.echo(f"{h5file}: {meta.get('ensemble', '?')} run, {meta.get('formula', '')}, status {status}")
    for k, attrs, result in results:
        if count > 1:
            click.echo(f"system {k} ({attrs.get('label', '')}, {attrs.get('status', '?')}):")
        click.echo(result.format())
    if png:
        try:
            plot(h5file, png, system=0 if system is None else system)
        except ImportError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"plot written to {png}")
    if any(getattr(r, "passed", True) is False for _, _, r in results):
        sys.exit(1)


@click.command("convert")
@click.argument("h5file", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--index", default=":", show_default=True, help="Frames to convert (e.g. ':', '-1', '::10').")
@click.option("--system", type=int, default=0, show_default=True, help="System of a many-system run.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def convert(h5file, output, index, system, overwrite):
    """Write the frames of a run's HDF5 file as .traj, .xyz/.extxyz or any format ASE writes."""
    import ase.io
    from ase.io.formats import string2index

    from .h5 import read_frames

    if Path(output).exists() and not overwrite:
        raise click.ClickException(f"{output} exists; choose another name or pass --overwrite")
    _check_output_file(output, "OUTPUT")
    try:
        selection = string2index(index)
        if isinstance(selection, str):  # ASE passes non-numbers on as database queries
            raise ValueError(index)
    except ValueError:
        raise click.ClickException(f"--index {index!r} is not a frame index or slice; write e.g. ':', '-1' "
                                   "or '::10'") from None
    try:
        frames = read_frames(h5file, selection, system=system)
    except (FileNotFoundError, ValueError, IndexError) as error:
        raise click.ClickException(str(error)) from None
    if not frames:
        raise click.ClickException(f"no frames selected by --index {index}")
    try:
        ase.io.write(output, frames)
    except Exception as error:
        raise click.ClickException(f"could not write {output}: {error}") from None
    click.echo(f"wrote {len(frames)} frames to {output}")
