"""Per-element reference energies by least squares, and the scale of what is left.

Total energies of molecules are ~10^3 eV per atom, dominated by the isolated
atoms; the network should only learn the small remainder. With c_b the element
counts of frame b:

    E_b ≈ Σ_Z c_bZ · E_ref[Z]           (least squares over the training frames)
    r_b = E_b − Σ_Z c_bZ · E_ref[Z]     (what the network fits, via E_i = scale·y_i + shift)

| quantity | choice                                                       |
|----------|--------------------------------------------------------------|
| E_ref    | ``numpy.linalg.lstsq`` (minimum norm when compositions are collinear, e.g. one molecule) |
| shift    | mean of r_b / n_b (≈ 0 after the fit)                         |
| scale    | RMS of the force components when forces exist (as in nequip), else the std of r_b / n_b |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import atomic_numbers

from .data import Dataset


@dataclass(frozen=True)
class EnergyReference:
    element_energy: dict[str, float]  # eV per atom of each element
    scale: float  # eV
    shift: float  # eV per atom


def composition_matrix(data: Dataset, species: list[str]) -> np.ndarray:
    """[n_frames, n_species] element counts."""
    column = np.full(max([atomic_numbers[s] for s in species] + [int(data.atoms.numbers.max(initial=0))]) + 1, -1)
    for k, s in enumerate(species):
        column[atomic_numbers[s]] = k
    columns = column[data.atoms.numbers]
    if (columns < 0).any():
        missing = sorted({int(z) for z in data.atoms.numbers[columns < 0]})
        raise ValueError(f"elements with Z = {missing} are not among the species {species}")
    counts = np.zeros((len(data), len(species)))
    np.add.at(counts, (data.atoms.frame_of_atom, columns), 1.0)
    return counts


def fit_energy_reference(data: Dataset, species: list[str]) -> EnergyReference:
    counts = composition_matrix(data, species)
    reference, *_ = np.linalg.lstsq(counts, data.energy, rcond=None)
    residual = data.energy - counts @ reference  # [n_frames], eV
    per_atom = residual / data.n_atoms
    shift = float(per_atom.mean())
    if data.forces is not None:
        components = data.forces.values.reshape(-1)
        scale = float(np.sqrt(np.mean(components**2)))
    else:
        scale = float(per_atom.std())
    if not scale > 1e-12:
        scale = 1.0  # constant labels: nothing to standardise
    return EnergyReference({s: float(e) for s, e in zip(species, reference)}, scale, shift)
