"""``mlff-md relax``: the command line over :func:`ase_mlff.optimize.relax`.

Exit codes: 0 every structure converged, 1 some did not (or bad input; 2 for
usage errors). User errors end in one line, never a traceback.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click


def _table(results, cell: bool) -> str:
    """One line per structure: label, atoms, steps, final fmax (smax), converged, energy."""
    width = max(9, *(len(r.label) for r in results))
    head = f"{'structure':<{width}} {'atoms':>6} {'steps':>6} {'fmax[eV/Å]':>11}"
    if cell:
        head += f" {'smax[eV/Å³]':>12}"
    lines = [head + f" {'converged':<9} {'energy[eV]':>16}"]
    for r in results:
        line = f"{r.label:<{width}} {len(r.atoms):>6d} {r.steps:>6d} {r.fmax:>11.3g}"
        if cell:
            line += f" {r.smax:>12.3g}"
        lines.append(line + f" {'yes' if r.converged else 'NO':<9} {r.energy:>16.6f}")
    failed = sum(not r.converged for r in results)
    lines.append(f"summary: {len(results) - failed} converged" + (f", {failed} NOT converged" if failed else ""))
    return "\n".join(lines)


@click.command("relax")
@click.argument("structures", nargs=-1)
@click.option("--fmax", type=float, default=0.01, show_default=True,
              help="Converged when every force (and, with --cell, cell force) is below this, eV/Å.")
@click.option("--cell", "relax_cell", is_flag=True, help="Relax the cell too (Fréchet cell filter; 3-D periodic "
              "structures only).")
@click.option("--pressure-bar", type=float, default=0.0, show_default=True,
              help="External pressure on the cell, bar (with --cell; 1 GPa = 10000 bar).")
@click.option("--steps", type=int, default=1000, show_default=True, help="Most FIRE steps per structure.")
@click.option("-m", "--model", help="Model file or bundled potential name [default: a bundled "
              "potential covering the structures' elements].")
@click.option("-o", "--output", default="relaxed.extxyz", show_default=True,
              help="Relaxed structures, in any format ASE writes (chosen by the extension).")
@click.option("--trajectory", default=None, help="Optimisation trajectory: FILE.traj for one structure, "
              "FILE.<k>.traj per structure for many.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Precision of the network (geometry is always float64).")
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: by system size].")
def relax_command(structures, fmax, relax_cell, pressure_bar, steps, model, output, trajectory, overwrite,
                  device, dtype, threads):
    """Relax STRUCTURES (files, file@frame or file@slice) together with batched FIRE.

    \b
    mlff-md relax structure.xyz --fmax 0.01
    mlff-md relax a.cif b.vasp frames.extxyz@: --cell -m model.pt -o relaxed.extxyz --trajectory relax.traj
    """
    from ..compositions import OutOfTrainingWarning
    from ..md.cli import calculator_for, read_structures
    from .driver import relax
    from .output import check_free, output_format, trajectory_paths, write_structures

    if not structures:
        raise click.UsageError("give one or more STRUCTURE files")
    if not 0 < fmax < float("inf"):
        raise click.BadParameter(f"must be a finite positive force in eV/Å, got {fmax}", param_hint="--fmax")
    if steps < 0:
        raise click.BadParameter(f"must be a number of steps >= 0, got {steps}", param_hint="--steps")
    if pressure_bar != 0 and not relax_cell:
        raise click.BadParameter(f"{pressure_bar} bar acts on the cell; add --cell", param_hint="--pressure-bar")
    systems = [pair for spec in structures for pair in read_structures(spec)]
    labels = [label for label, _ in systems]
    atoms_list = [atoms for _, atoms in systems]
    try:
        output_format(output, len(atoms_list))
        check_free([Path(output)], overwrite, "output file")
        if trajectory is not None:
            check_free(trajectory_paths(trajectory, len(atoms_list)), overwrite, "trajectory file")
    except (ValueError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None
    calculator, _, _ = calculator_for(atoms_list, model, device, dtype, threads)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutOfTrainingWarning)
            results = relax(atoms_list, calculator, fmax=fmax, cell=relax_cell, pressure_bar=pressure_bar,
                            steps=steps, trajectory=trajectory, overwrite=overwrite, labels=labels)
        for message in dict.fromkeys(str(w.message) for w in caught if w.category is OutOfTrainingWarning):
            click.echo(f"Warning: {message}", err=True)
        write_structures(output, [r.atoms for r in results], overwrite=overwrite)
    except (ValueError, FileExistsError, FileNotFoundError, PermissionError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(_table(results, relax_cell))
    failed = [r for r in results if not r.converged]
    written = f"wrote {len(results)} structure{'s' if len(results) > 1 else ''} to {output}"
    if failed:
        written += f" ({len(failed)} not converged, marked converged=False in their info)"
    if trajectory is not None:
        paths = [r.trajectory for r in results]
        written += "; trajectory " + (str(paths[0]) if len(paths) == 1 else f"{paths[0]} ... {paths[-1]}")
    click.echo(written)
    if failed:
        sys.exit(1)
