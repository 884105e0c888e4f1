"""Which compositions a model was trained on, and a warning for structures outside them.

A *composition* is the reduced (empirical) formula of a structure in ASE's Hill
order (C and H first, then alphabetical), as
``atoms.get_chemical_formula(mode="hill", empirical=True)`` writes it: ethanol
is "C2H6O", a periodic box of 64 water molecules "H2O". Model files written by
training record, under ``metadata["training_data"]``, the compositions and
elements of their training frames::

    {"compositions": ["C2H6O"], "elements": ["C", "H", "O"], "n_frames": 1000}

A network only interpolates between what it was fitted on: ethanol-painn's
force error on aspirin (C9H8O4) is about 0.7 eV/Å, fifty times its ethanol
test error, with no sign of trouble in the numbers it returns. So calculators
warn, once per composition, when a structure's composition is not in that
list; models without the record (imported or older files) never warn.

A model trained without forces (QM9's energies, say) is marked
``metadata["training"]["forces_trained"] = False`` by the trainer: its
energies were fitted, its forces (the gradient of those energies) never
were. :func:`energy_only` reads the mark; calculators warn once
(:class:`EnergyOnlyWarning`), ``mlff-md info`` says it, and automatic
selection of a bundled potential never picks such a model
(:func:`ase_mlff.bundled.bundled_potentials`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import gcd

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

#: metadata key of the training-data record
TRAINING_DATA_KEY = "training_data"


class OutOfTrainingWarning(UserWarning):
    """A structure's composition was never in the model's training data."""


class EnergyOnlyWarning(OutOfTrainingWarning):
    """The model was trained on energies only: its forces were never fitted.

    A subclass of :class:`OutOfTrainingWarning` (forces are outside what it was
    trained on), so whatever shows or silences those treats this one alike.
    """


def forces_trained(metadata: dict | None) -> bool | None:
    """``metadata["training"]["forces_trained"]``: False for an energy-only model, None where unrecorded."""
    training = metadata.get("training") if isinstance(metadata, dict) else None
    value = training.get("forces_trained") if isinstance(training, dict) else None
    return value if isinstance(value, bool) else None


def energy_only(metadata: dict | None) -> bool:
    """Whether the model says it was trained without forces (unrecorded counts as not)."""
    return forces_trained(metadata) is False


def energy_only_message(model_name: str) -> str:
    """The one-line warning for using an energy-only model."""
    return (f"{model_name} was trained on energies only: its forces were never trained, so forces, MD "
            "and relaxations with it are unvalidated (energies of structures like its training data are "
            "what it was fitted to)")


def composition_of_numbers(numbers: Iterable[int]) -> str:
    """Reduced Hill formula of atomic numbers: [6, 6, 1, 1, 1, 1, 1, 1, 8] -> "C2H6O".

    Equal to ``Atoms.get_chemical_formula(mode="hill", empirical=True)`` (the
    tests compare them) without building symbol lists, so it stays cheap for
    boxes of many thousand atoms.
    """
    numbers = numbers if isinstance(numbers, np.ndarray) else np.fromiter(numbers, dtype=np.int64)
    counts = np.bincount(numbers.astype(np.int64, copy=False).ravel())  # counts[z] = atoms of element z
    present = [int(z) for z in np.nonzero(counts)[0]]
    if not present:
        return ""
    divisor = 0
    for z in present:
        divisor = gcd(divisor, int(counts[z]))
    by_symbol = {chemical_symbols[z]: int(counts[z]) // divisor for z in present}
    order = [s for s in ("C", "H") if s in by_symbol] + sorted(s for s in by_symbol if s not in ("C", "H"))
    return "".join(s if by_symbol[s] == 1 else f"{s}{by_symbol[s]}" for s in order)


def composition(atoms: Atoms) -> str:
    """Reduced (empirical) formula of a structure in Hill order: ethanol "C2H6O", 64 H2O "H2O"."""
    return composition_of_numbers(atoms.numbers)


def training_data_record(frames: Sequence[Atoms]) -> dict:
    """``metadata["training_data"]`` for a model trained on ``frames``: sorted compositions and elements.

    ``frames`` may be flat (:class:`~ase_mlff.training.flat.FlatFrames`, with ``numbers`` and
    ``offsets``): then no ``Atoms`` are built.
    """
    if hasattr(frames, "offsets") and hasattr(frames, "numbers"):
        flat = np.asarray(frames.numbers)
        compositions = {composition_of_numbers(flat[a:b]) for a, b in zip(frames.offsets[:-1], frames.offsets[1:])}
        numbers = {int(z) for z in np.unique(flat)}
    else:
        compositions = {composition(a) for a in frames}
        numbers = {int(z) for a in frames for z in np.unique(a.numbers)}
    return {"compositions": sorted(compositions), "elements": sorted(chemical_symbols[z] for z in numbers),
            "n_frames": len(frames)}


def training_compositions(metadata: dict | None) -> list[str] | None:
    """The compositions a model's metadata says it was trained on; None where it does not say.

    Metadata is free-form (an edited or foreign file may hold anything), so a
    record that is not a list of strings counts as absent: no warnings rather
    than wrong ones.
    """
    record = (metadata or {}).get(TRAINING_DATA_KEY) if isinstance(metadata, dict) else None
    compositions = record.get("compositions") if isinstance(record, dict) else None
    if not isinstance(compositions, list) or not compositions or not all(isinstance(c, str) for c in compositions):
        return None
    return list(compositions)


def out_of_training_message(model_name: str, trained_on: Sequence[str], structure_composition: str) -> str:
    """The one-line warning for a structure of a composition the model was not trained on.

    A model trained on many compositions (QM9: hundreds) is named by the first few
    and a count, so that the line stays a line.
    """
    shown = ", ".join(trained_on[:_LISTED])
    if len(trained_on) > _LISTED:
        shown = f"{len(trained_on)} compositions ({shown}, ...)"
    return (f"{model_name} was trained on {shown}; this structure is {structure_composition}: "
            "predictions outside the training data may be far off (force errors of tens of times the "
            "test error)")


#: compositions named in the out-of-training warning before it counts the rest
_LISTED = 6
