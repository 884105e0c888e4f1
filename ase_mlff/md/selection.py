"""Which bundled potential runs a structure when the user names none.

Among the bundled potentials whose species cover every element of the
structure, take the one with the fewest species (the most specialised), then
the lowest ``metadata["default_priority"]`` (missing counts as 100), then the
name. Species and metadata come from the model files' records; no model is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ase.data import chemical_symbols

from ..bundled import bundled_potentials, potentials_dir

DEFAULT_PRIORITY = 100


def bundled_species() -> dict[str, tuple[list[str], int, Path]]:
    """name -> (species, default_priority, path) for every readable bundled potential."""
    from ..io import read_model_record

    table = {}
    for name, path in bundled_potentials().items():
        try:
            record = read_model_record(path)
        except (ValueError, OSError):
            continue  # a broken file must not hide the others; it cannot be chosen
        priority = (record.get("metadata") or {}).get("default_priority", DEFAULT_PRIORITY)
        table[name] = (list(record["species"]), int(priority), path)
    return table


def choose_potential(numbers: Iterable[int]) -> tuple[str, Path]:
    """(name, path) of the bundled potential for a structure with these atomic numbers.

    Raises:
        ValueError: no bundled potential covers the elements; lists what is bundled.
    """
    needed = {chemical_symbols[int(z)] for z in numbers}
    table = bundled_species()
    candidates = [
        (len(species), priority, name, path)
        for name, (species, priority, path) in table.items()
        if needed <= set(species)
    ]
    if candidates:
        _, _, name, path = min(candidates)
        return name, path
    if not table:
        raise ValueError(f"no bundled potentials are installed (looked in {potentials_dir()}); "
                         "give a model file with -m/--model")
    listing = "; ".join(f"{name} ({', '.join(species)})" for name, (species, _, _) in table.items())
    raise ValueError(f"no bundled potential covers the elements {', '.join(sorted(needed))} of the "
                     f"structure; bundled: {listing}; give a model that does with -m/--model")
