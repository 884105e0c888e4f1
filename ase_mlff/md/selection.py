"""Which bundled potential runs a structure when the user names none.

Only potentials that can be trusted on the structures are candidates: their
species cover every element, and, where a potential records the compositions
it was trained on (``metadata["training_data"]``, see
:mod:`ase_mlff.compositions`), every structure's composition is among them; a
potential without that record is judged by its elements alone. A network
outside its training data fails silently (ethanol-painn's forces on aspirin
are off by about 0.7 eV/Å), so no candidate is an error, not a guess. Among
the candidates, take the one with the fewest species (the most specialised),
then the lowest ``metadata["default_priority"]`` (missing counts as 100), then
the name. Species and metadata come from the model files' records; no model
is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ase.data import chemical_symbols
from ase.formula import Formula

from ..bundled import bundled_potentials, potentials_dir
from ..compositions import composition_of_numbers, training_compositions

DEFAULT_PRIORITY = 100


@dataclass(frozen=True)
class BundledPotential:
    """What selection needs to know of one bundled model file."""

    name: str
    path: Path
    species: tuple[str, ...]
    priority: int
    compositions: tuple[str, ...] | None  # None: the file does not record its training compositions

    def describe(self) -> str:
        """'ethanol-painn (C, H, O; trained on C2H6O)'."""
        trained = f"; trained on {', '.join(self.compositions)}" if self.compositions is not None else ""
        return f"{self.name} ({', '.join(self.species)}{trained})"


def bundled_table() -> list[BundledPotential]:
    """Every readable bundled potential, sorted by name."""
    from ..io import read_model_record

    table = []
    for name, path in bundled_potentials().items():
        try:
            record = read_model_record(path)
        except (ValueError, OSError):
            continue  # a broken file must not hide the others; it cannot be chosen
        metadata = record.get("metadata") or {}
        compositions = training_compositions(metadata)
        table.append(BundledPotential(name, path, tuple(record["species"]),
                                      int(metadata.get("default_priority", DEFAULT_PRIORITY)),
                                      None if compositions is None else tuple(compositions)))
    return table


def choose_potential(numbers: Iterable[int], compositions: Sequence[str] | None = None) -> tuple[str, Path]:
    """(name, path) of the bundled potential for structures with these atomic numbers.

    Args:
        numbers: atomic numbers of all the structures together.
        compositions: each structure's composition
            (:func:`ase_mlff.compositions.composition`); None: ``numbers`` are one structure.

    Raises:
        ValueError: no bundled potential covers the elements, or none was trained on
            the compositions; lists what is bundled and how to force one with -m.
    """
    numbers = [int(z) for z in numbers]
    needed = {chemical_symbols[z] for z in numbers}
    wanted = sorted(set(compositions if compositions is not None else [composition_of_numbers(numbers)]))
    table = bundled_table()
    if not table:
        raise ValueError(f"no bundled potentials are installed (looked in {potentials_dir()}); "
                         "give a model file with -m/--model")
    listing = "; ".join(p.describe() for p in table)
    by_elements = [p for p in table if needed <= set(p.species)]
    if not by_elements:
        raise ValueError(f"no bundled potential covers the elements {', '.join(sorted(needed))} of the "
                         f"structure; bundled: {listing}; give a model that does with -m/--model")
    candidates = [p for p in by_elements if p.compositions is None or set(wanted) <= set(p.compositions)]
    if candidates:
        best = min(candidates, key=lambda p: (len(p.species), p.priority, p.name))
        return best.name, best.path
    untrained = [c for c in wanted if not any(_trained_on(p, c) for p in table)]
    if untrained:
        what = (f"the composition {untrained[0]} of the structure" if len(wanted) == 1
                else f"the composition(s) {', '.join(untrained)} among the structures")
    else:
        what = f"all of the structures' compositions {', '.join(wanted)} (run them separately)"
    raise ValueError(f"no bundled potential was trained on {what}; bundled: {listing}; "
                     "give one with -m NAME to run it anyway")


def _trained_on(potential: BundledPotential, composition: str) -> bool:
    """Whether ``potential`` may run structures of ``composition`` (by elements where it records none)."""
    if potential.compositions is not None:
        return composition in potential.compositions
    return set(Formula(composition).count()) <= set(potential.species)
