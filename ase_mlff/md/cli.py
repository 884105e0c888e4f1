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

from .driver import ENSEMBLES, EXIT_BLOWUP, VELOCITY_MODES
from .report import DEFAULT_MAX_DRIFT


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_structure(spec: str):
    """One Atoms from ``file`` or ``file@index`` (any format ASE reads)."""
    import ase.io

    path = Path(spec)
    if not path.exists() and "@" in spec:
        path = Path(spec.rsplit("@", 1)[0])
    if not path.exists():
        raise click.ClickException(f"structure file {path} does not exist; give a file ASE can read "
                                   "(xyz, extxyz, cif, POSCAR, pdb, traj, ...)")
    if path.is_dir():
        raise click.ClickException(f"{path} is a directory; give a structure file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # format readers warn about many harmless things
            atoms = ase.io.read(spec)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise click.ClickException(
            f"could not read a structure from {spec} ({type(error).__name__}: {first}); give a file "
            "ASE can read (xyz, extxyz, cif, POSCAR, pdb, traj) and a frame as file.traj@-1") from None
    if isinstance(atoms, list):
        raise click.ClickException(f"{spec} selects {len(atoms)} frames; choose one, e.g. {path}@-1")
    if len(atoms) == 0:
        raise click.ClickException(f"{spec} contains no atoms")
    return atoms


def _calculator(model: str | None, numbers, device: str, dtype: str, threads: int | None):
    """(calculator, model path, name shown to the user)."""
    from ..bundled import resolve_model_path
    from ..calculator import MLFFCalculator
    from .selection import choose_potential

    try:
        if model is None:
            name, path = choose_potential(numbers)
            label = f"bundled potential {name} ({path})"
        else:
            path = resolve_model_path(model)
            label = str(path) if Path(model).exists() else f"bundled potential {model} ({path})"
        calculator = MLFFCalculator(path, device=device, dtype=dtype, num_threads=threads)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    try:
        calculator.model.check_numbers(sorted({int(z) for z in numbers}))
    except ValueError as error:
        raise click.ClickException(f"{label}: {error}") from None
    return calculator, Path(path), label


def _echo_result(result, quiet: bool) -> None:
    if result.status == "completed":
        rate = result.steps_run / result.wall_s if result.wall_s > 0 else float("nan")
        summary, _, note = result.message.partition("\n")  # note: why there is no report
        click.echo(f"{summary} in {result.wall_s:.1f} s ({rate:.1f} steps/s)" + (f"\n{note}" if note else ""))
    if result.report is not None:
        click.echo(result.report.format())
    click.echo("outputs: " + ", ".join(str(p) for p in result.paths.values()))


@click.command("run")
@click.argument("structure", required=False)
@click.option("-m", "--model", help="Model file or bundled potential name [default: a bundled "
              "potential covering the structure's elements].")
@click.option("--ensemble", type=click.Choice(ENSEMBLES), default="nve", show_default=True)
@click.option("--timestep-fs", type=float, default=0.5, show_default=True, help="Timestep in fs.")
@click.option("--temperature", "temperature_K", type=float, default=300.0, show_default=True,
              help="Initial (Maxwell-Boltzmann) and thermostat temperature in K.")
@click.option("--friction", "friction_per_fs", type=float, default=0.01, show_default=True,
              help="Langevin friction in 1/fs.")
@click.option("--taut-fs", type=float, default=100.0, show_default=True,
              help="Bussi / Nosé-Hoover time constant in fs.")
@click.option("--steps", type=int, default=None, help="Total number of steps [default: 1000; "
              "with --restart, the original run's total].")
@click.option("--seed", type=int, default=None, help="Random seed (velocities and thermostat); "
              "the same seed repeats a run bit for bit on the same machine [default: drawn, stored].")
@click.option("--velocities", type=click.Choice(VELOCITY_MODES), default="maxwell-boltzmann",
              show_default=True, help="Initial velocities: sampled at --temperature, or those in "
              "the structure file.")
@click.option("-o", "--output", default="simulation", show_default=True,
              help="Prefix of the output files (.traj, .h5, .log).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--restart", type=click.Path(dir_okay=False), default=None,
              help="Continue the run stored in this HDF5 file (its settings are reused).")
@click.option("--traj-interval", type=int, default=10, show_default=True,
              help="Steps between .traj frames (0: none).")
@click.option("--h5-interval", type=int, default=10, show_default=True, help="Steps between HDF5 frames.")
@click.option("--log-interval", type=int, default=100, show_default=True, help="Steps between log lines.")
@click.option("--flush-every", type=int, default=100, show_default=True,
              help="HDF5 frames between flushes to disk (also flushed every 30 s).")
@click.option("--max-drift", type=float, default=DEFAULT_MAX_DRIFT, show_default=True,
              help="NVE energy drift threshold in meV/atom/ps for PASS/FAIL.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: cores available].")
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
@click.pass_context
def run(ctx, structure, model, ensemble, timestep_fs, temperature_K, friction_per_fs, taut_fs, steps,
        seed, velocities, output, overwrite, restart, traj_interval, h5_interval, log_interval,
        flush_every, max_drift, device, dtype, threads, quiet):
    """Run molecular dynamics on STRUCTURE (file or file@frame).

    \b
    mlff-md run ethanol.xyz --steps 10000
    mlff-md run water.xyz -m model.pt --ensemble langevin --temperature 300 --friction 0.01
    mlff-md run --restart simulation.h5 --steps 20000
    """
    from .driver import run_md
    from .validate import MDWarning, check_structure

    command_line = shlex.join(["mlff-md", *sys.argv[1:]]) if sys.argv else "mlff-md run"
    progress = not quiet and sys.stdout.isatty()
    if steps is not None and steps <= 0:
        raise click.BadParameter(f"must be a positive number of steps, got {steps}", param_hint="--steps")
    if timestep_fs <= 0:
        raise click.BadParameter(f"must be positive, got {timestep_fs} fs; 0.5 fs is safe with hydrogen",
                                 param_hint="--timestep-fs")
    if restart is not None:
        result = _restart(restart, structure, model, steps, max_drift, ctx, device, dtype, threads,
                          progress, command_line)
    else:
        if structure is None:
            raise click.UsageError("give a STRUCTURE file (or --restart FILE.h5)")
        atoms = read_structure(structure)
        calculator, model_path, label = _calculator(model, atoms.numbers, device, dtype, threads)
        if model is None:
            click.echo(f"using {label}")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", MDWarning)
                check_structure(atoms, timestep_fs)
            for w in caught:
                if issubclass(w.category, MDWarning):
                    click.echo(f"Warning: {w.message}", err=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MDWarning)  # already shown
                result = run_md(
                    atoms, calculator, ensemble=ensemble, timestep_fs=timestep_fs,
                    temperature_K=temperature_K, friction_per_fs=friction_per_fs, taut_fs=taut_fs,
                    steps=1000 if steps is None else steps, seed=seed, velocities=velocities,
                    output=output, overwrite=overwrite, traj_interval=traj_interval,
                    h5_interval=h5_interval, log_interval=log_interval, flush_every=flush_every,
                    max_drift=max_drift, progress=progress, handle_signals=True,
                    metadata={"command_line": command_line, "model_file": str(model_path),
                              "model_sha256": _sha256(model_path), "model_label": label,
                              "structure_file": structure})
        except (ValueError, FileExistsError, FileNotFoundError) as error:
            raise click.ClickException(str(error)) from None
    _echo_result(result, quiet)
    if result.status == "blew-up":
        raise _blowup_exit(result.message)
    if result.status == "interrupted":
        click.echo(result.message, err=True)
        ctx.exit(143 if "SIGTERM" in result.message else 130)
    if result.exit_code:
        ctx.exit(1)


def _blowup_exit(message: str):
    error = click.ClickException(message)
    error.exit_code = EXIT_BLOWUP
    return error


#: options fixed by the original run (a restart reads them from the HDF5 file)
_RUN_SETTINGS = ("ensemble", "timestep_fs", "temperature_K", "friction_per_fs", "taut_fs", "seed",
                 "velocities", "output", "overwrite", "traj_interval", "h5_interval", "log_interval",
                 "flush_every")


def _restart(restart, structure, model, steps, max_drift, ctx, device, dtype, threads, progress,
             command_line):
    from .driver import restart_md
    from .h5 import read_metadata

    if structure is not None:
        raise click.UsageError("--restart continues from the HDF5 file; do not give a STRUCTURE too")
    flags = {p.name: max(p.opts, key=len) for p in ctx.command.params}
    fixed = [flags[name] for name in _RUN_SETTINGS
             if ctx.get_parameter_source(name) is not None
             and ctx.get_parameter_source(name).name == "COMMANDLINE"]
    if fixed:
        raise click.UsageError(f"--restart reuses the settings stored in the run's file; drop "
                               f"{', '.join(fixed)} (only --steps, --max-drift, -m, --device, --dtype, "
                               "--threads and --quiet apply)")
    try:
        meta = read_metadata(restart)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    if model is None:
        model = meta.get("model_file")
        if not model or not Path(model).exists():
            raise click.ClickException(f"the model of this run ({model}) is not available; give it with -m/--model")
    from ..bundled import resolve_model_path

    try:
        model_path = resolve_model_path(model)
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    stored = meta.get("model_sha256")
    if stored and _sha256(model_path) != stored:
        raise click.ClickException(f"{model_path} is not the model this run started with (its sha256 "
                                   "differs); give the original model with -m/--model")
    calculator, _, _ = _calculator(str(model_path), [], device, dtype, threads)
    ctx_max_drift = ctx.get_parameter_source("max_drift")
    explicit = ctx_max_drift is not None and ctx_max_drift.name != "DEFAULT"
    try:
        return restart_md(restart, calculator, steps=steps, max_drift=max_drift if explicit else None,
                          progress=progress, handle_signals=True, command_line=command_line)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None


@click.command("report")
@click.argument("h5file", type=click.Path(dir_okay=False))
@click.option("--max-drift", type=float, default=None,
              help="NVE drift threshold in meV/atom/ps [default: the run's].")
@click.option("--plot", "png", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of energies and temperature against time.")
def report(h5file, max_drift, png):
    """Energy conservation (NVE) or temperature statistics of a run's HDF5 file."""
    from .h5 import read_metadata
    from .report import plot, report_from_h5

    try:
        meta = read_metadata(h5file)
        result = report_from_h5(h5file, max_drift)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    status = meta.get("status", "?")
    click.echo(f"{h5file}: {meta.get('ensemble', '?')} run, {meta.get('formula', '')}, status {status}")
    click.echo(result.format())
    if png:
        try:
            plot(h5file, png)
        except ImportError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"plot written to {png}")
    if getattr(result, "passed", True) is False:
        sys.exit(1)


@click.command("convert")
@click.argument("h5file", type=click.Path(dir_okay=False))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--index", default=":", show_default=True, help="Frames to convert (e.g. ':', '-1', '::10').")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def convert(h5file, output, index, overwrite):
    """Write the frames of a run's HDF5 file as .traj, .xyz/.extxyz or any format ASE writes."""
    import ase.io
    from ase.io.formats import string2index

    from .h5 import read_frames

    if Path(output).exists() and not overwrite:
        raise click.ClickException(f"{output} exists; choose another name or pass --overwrite")
    try:
        frames = read_frames(h5file, string2index(index))
    except (FileNotFoundError, ValueError, IndexError) as error:
        raise click.ClickException(str(error)) from None
    if not frames:
        raise click.ClickException(f"no frames selected by --index {index}")
    try:
        ase.io.write(output, frames)
    except Exception as error:
        raise click.ClickException(f"could not write {output}: {error}") from None
    click.echo(f"wrote {len(frames)} frames to {output}")


COMMANDS = (run, report, convert)
