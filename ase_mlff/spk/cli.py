"""``mlff-md import``: convert a SchNetPack 2 model file once into an ase-mlff model file."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..units import ENERGY_UNITS, LENGTH_UNITS
from . import DEFAULT_ENERGY_UNIT, DEFAULT_LENGTH_UNIT


@click.command("import")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="ase-mlff model file to write (e.g. model.pt).")
@click.option("--energy-unit", default=DEFAULT_ENERGY_UNIT, show_default=True,
              type=click.Choice(sorted(ENERGY_UNITS)),
              help="Energy unit the model was trained in (SchNetPack files do not record it; "
                   "the default is SpkCalculator's).")
@click.option("--length-unit", default=DEFAULT_LENGTH_UNIT, show_default=True,
              type=click.Choice(sorted(LENGTH_UNITS)),
              help="Length unit the model was trained in (the default is SpkCalculator's, Angstrom).")
@click.option("--species", default=None,
              help="Elements to cover, e.g. H,C,O (default: every element the model embeds).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def import_model(model: str, output: str, energy_unit: str, length_unit: str, species: str | None,
                 overwrite: bool) -> None:
    """Convert a SchNetPack 2 model file (spktrain's best_model) into an ase-mlff model file.

    The pickle is read without running any code from it; the result is in eV
    and Å and computes the same energies, forces and stress as SchNetPack's
    SpkCalculator. Supported: SchNet and PaiNN with GaussianRBF/BesselRBF and
    CosineCutoff, an Atomwise energy head, Forces, and the postprocessors
    CastTo64, AddOffsets and ScaleProperty.
    """
    from ..io import save_model
    from . import load_schnetpack

    start = time.perf_counter()
    elements = [s.strip() for s in species.split(",") if s.strip()] if species else None
    try:
        potential = load_schnetpack(model, energy_unit=energy_unit, length_unit=length_unit, species=elements)
        path = save_model(potential, output, overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    source = potential.metadata["imported_from"]
    version = source["schnetpack_version"] or "unrecorded"
    click.echo(f"wrote {Path(path)}: {potential.architecture}, {len(potential.species)} elements, cutoff "
               f"{potential.cutoff:g} Å, from SchNetPack {version} ({energy_unit}, {length_unit}) in "
               f"{time.perf_counter() - start:.2f} s")
