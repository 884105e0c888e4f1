"""SchNetPack 2 model files (``best_model`` from ``spktrain``), read safely and run as ase-mlff models.

    from ase_mlff.spk import load_schnetpack
    model = load_schnetpack("best_model", energy_unit="kcal/mol")   # an ase_mlff SchNet or PaiNN
    MLFFCalculator("best_model")                                     # the same, SchNetPack's default units
    mlff-md import best_model -o model.pt --energy-unit kcal/mol      # once, into our own format

SchNetPack need not be installed. The file is a pickled module tree; it is
read by :mod:`.unpickle`, which runs no code from it, and mapped onto our
networks by :mod:`.convert`, which refuses what it cannot reproduce exactly.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

from .convert import SUPPORTED, convert
from .unpickle import ModuleRecord, is_schnetpack_file, read_pickled_model

#: SchNetPack's SpkCalculator defaults: what a SchNetPack model's numbers mean when nobody says
DEFAULT_ENERGY_UNIT = "kcal/mol"
DEFAULT_LENGTH_UNIT = "Å"


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_schnetpack(path: str | os.PathLike, energy_unit: str = DEFAULT_ENERGY_UNIT,
                    length_unit: str = DEFAULT_LENGTH_UNIT, species=None):
    """A SchNetPack 2 model file as an ase-mlff :class:`~ase_mlff.models.Potential` (eV, Å), in eval mode.

    Args:
        energy_unit, length_unit: units the model was trained in (SchNetPack files do not say).
        species: elements to cover (symbols or atomic numbers); None: all the model embeds.

    Returns:
        the model, with ``metadata["imported_from"]``: the file's SHA-256, the
        SchNetPack version (when the file records it), its classes and units.
    """
    from ..models.base import species_to_numbers

    path = Path(path)
    pickled = read_pickled_model(path)
    numbers = species_to_numbers(species) if species else None
    try:
        model = convert(pickled, energy_unit, length_unit, numbers)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    except (AttributeError, TypeError, KeyError, IndexError, RuntimeError) as error:
        # records whose state is not what SchNetPack writes (a damaged or crafted file)
        raise ValueError(f"{path}: not a SchNetPack model this importer understands "
                         f"({type(error).__name__}: {str(error)[:160]}); {SUPPORTED}") from None
    root = pickled.root
    version = root.state.get("spk_version") if isinstance(root, ModuleRecord) else None
    forces = [m for m in root.child("output_modules").children() if m.name == "Forces"]
    model.metadata = {"imported_from": {
        "format": "schnetpack",
        "file": path.name,
        "sha256": sha256(path),
        "schnetpack_version": version if isinstance(version, str) else None,
        "classes": sorted({c for c in pickled.classes if c.startswith(("schnetpack.", "torch.nn.modules."))}),
        "energy_unit": energy_unit,
        "length_unit": length_unit,
        "trained_with_stress": bool(forces and forces[0].state.get("calc_stress")),
    }}
    model.source = str(path)
    # float64 holds SchNetPack's float32 weights exactly and the unit-converted radial
    # basis (centers·ℓ, frequencies/ℓ) without a second rounding; calculators pick their dtype
    return model.double().eval()


def schnetpack_record(path: str | os.PathLike) -> dict:
    """The model-file record (see :mod:`ase_mlff.io`) of a SchNetPack file in SpkCalculator's default units."""
    from ..io import model_record

    model = load_schnetpack(path)
    # the file does not say its units; an eV model read as kcal/mol would be 23x off, silently
    warnings.warn(f"{path} is a SchNetPack model: read in {DEFAULT_ENERGY_UNIT} and {DEFAULT_LENGTH_UNIT} "
                  "(SpkCalculator's defaults; the file does not record its units); for other units "
                  f"convert it once: mlff-md import {path} -o model.pt --energy-unit ... --length-unit ...",
                  UserWarning, stacklevel=3)
    return model_record(model)


__all__ = ["DEFAULT_ENERGY_UNIT", "DEFAULT_LENGTH_UNIT", "SUPPORTED", "is_schnetpack_file",
           "load_schnetpack", "read_pickled_model", "schnetpack_record"]
