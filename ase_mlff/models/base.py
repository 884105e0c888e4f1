"""What every potential shares: species, cutoff, and the energy reference.

A potential maps (atomic numbers [N], edge_index [2, E], edge_vectors [E, 3] Å)
to per-atom energies [N] in eV. The edge list is full, as :mod:`ase_mlff.neighbors`
builds it: every pair within the cutoff appears in both directions, (i, j, r)
and (j, i, −r) (networks may evaluate what depends on |r| once per pair):

    E_i = scale · y_i + shift + E_ref[Z_i]  (+ u_i, an optional short-range repulsion)

where y_i is the network's dimensionless per-atom output, E_ref the
per-element reference energies (fitted by least squares on the training data)
and scale/shift standardise the rest; u_i is the atom's share of a switched
ZBL repulsion (:meth:`Potential.set_repulsion`, :mod:`ase_mlff.models.repulsion`),
zero wherever the training data were. Forces and stress are not computed
here: see :mod:`ase_mlff.forces`, the one place that differentiates.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn


def species_to_numbers(species: Sequence[str | int]) -> list[int]:
    """["H", "C", 8] -> [1, 6, 8] (sorted, unique), with a clear error for typos."""
    if isinstance(species, str):
        raise ValueError(
            f"species must be a list of element symbols, got the string {species!r}; "
            f"write e.g. species={list(_split_formula(species))!r}"
        )
    numbers = set()
    for s in species:
        if isinstance(s, str):
            if s not in atomic_numbers:
                raise ValueError(f"unknown element symbol {s!r} in species {list(species)}")
            numbers.add(atomic_numbers[s])
        else:
            z = int(s)
            if not 0 < z < len(chemical_symbols):
                raise ValueError(f"atomic number {s} out of range in species {list(species)}")
            numbers.add(z)
    if not numbers:
        raise ValueError("species must name at least one element")
    return sorted(numbers)


def _split_formula(text: str) -> list[str]:
    from ase.symbols import string2symbols

    try:
        return sorted(set(string2symbols(text)))
    except Exception:
        return ["H", "C", "O"]


class Potential(nn.Module):
    """Base class: subclasses implement :meth:`atomic_outputs` and set ``architecture``.

    Args:
        species: elements the model covers (symbols or atomic numbers).
        cutoff: radius in Å beyond which atoms do not interact.
    """

    architecture = "potential"
    #: edge count from which :meth:`atomic_outputs` evaluates its filters once per pair instead of once
    #: per directed edge (None: the model has no such size-dependent branch); see :meth:`pairwise`
    pairwise_min_edges: int | None = None
    #: on the CPU, edges per torch thread in each piece of whole systems that a large batch is
    #: evaluated in (:func:`ase_mlff.forces.pieces`), so that per-edge features stay in cache; None:
    #: the whole batch at once (a model with little per-edge state, such as Lennard-Jones)
    piece_edges_per_thread: int | None = None
    #: :meth:`atomic_outputs` also takes a half list (each pair once, ``half=True``; see
    #: ``ase_mlff.neighbors.Neighbors.half``): the skin lists then build half lists for it
    half_lists: bool = False
    #: a pair farther apart than :attr:`cutoff` contributes exactly nothing, to the energy and to every
    #: derivative (a switch that is exactly 0 there, or a mask): the skin lists then hand
    #: :meth:`atomic_outputs` their lists at cutoff + skin as they are, instead of filtering out the
    #: pairs beyond the cutoff on every call (cheaper for a model with little work per edge; the
    #: numbers are the same, as sums of the same terms and of exact zeros). Read from the class that
    #: defines the ``atomic_outputs`` (or ``forward``) that runs, see
    #: :func:`ase_mlff.neighbors.takes_wide_lists`: a subclass that overrides them must declare it again
    zero_beyond_cutoff: bool = False
    _pinned_pairwise: bool | None = None  # the branch fixed while a graph is traced (:meth:`pinned`)

    def __init__(self, species: Sequence[str | int], cutoff: float):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive (Å), got {cutoff}")
        self.cutoff = float(cutoff)
        numbers = species_to_numbers(species)
        self.species = [chemical_symbols[z] for z in numbers]
        index = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        index[numbers] = torch.arange(len(numbers))
        self.register_buffer("species_index", index)  # Z -> 0..n_species-1, or -1
        self.register_buffer("element_energy", torch.zeros(len(chemical_symbols), dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))
        self.register_buffer("shift", torch.zeros((), dtype=torch.float64))
        self.repulsion = None  # a short-range prior added to E_i (set_repulsion; ase_mlff.models.repulsion)

    def _apply(self, fn, recurse=True):
        # Reference energies stay float64 whatever dtype the network runs in:
        # they are ~10^3 eV per atom, where float32 steps are ~0.1 meV, and
        # the total energy of an NVE run must be resolved far below that.
        # scale and shift are kept in float64 too; as 0-d tensors they do not
        # promote the float32 network output they multiply.
        kept = {name: getattr(self, name) for name in ("element_energy", "scale", "shift")}
        super()._apply(fn, recurse)
        device = self.species_index.device
        for name, value in kept.items():
            setattr(self, name, value.to(device=device, dtype=torch.float64))
        return self

    # -- what subclasses provide ---------------------------------------------------
    def hyperparameters(self) -> dict:
        """Constructor arguments, enough to rebuild the module (JSON-compatible)."""
        raise NotImplementedError

    def atomic_outputs(self, species: torch.Tensor, edge_index: torch.Tensor,
                       edge_vectors: torch.Tensor) -> torch.Tensor:
        """Dimensionless per-atom outputs y_i, [n_atoms]."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------
    def forward(self, numbers: torch.Tensor, edge_index: torch.Tensor,
                edge_vectors: torch.Tensor, half: bool = False) -> torch.Tensor:
        """Per-atom energies [n_atoms] in eV (float64: the reference is added in float64).

        ``half``: the edges hold each pair once (only for a model with ``half_lists``).
        """
        species = self.species_index[numbers]
        if half:
            if not self.half_lists:
                raise ValueError(f"this {self.architecture} model needs a full neighbor list (both directions "
                                 f"of every pair), got a half list; build the list without half=True")
            y = self.atomic_outputs(species, edge_index, edge_vectors, half=True)
        else:
            y = self.atomic_outputs(species, edge_index, edge_vectors)
        energies = y * self.scale + self.shift + self.element_energy[numbers]
        if self.repulsion is not None:
            energies = energies + self.repulsion(species, edge_index, edge_vectors, half=half)
        return energies

    def pairwise(self, n_edges) -> bool:
        """Whether :meth:`atomic_outputs` takes its once-per-pair branch for ``n_edges`` edges.

        Both branches compute the same sum; which is faster depends on the size. A graph traced
        with symbolic sizes keeps the branch of its trace (:mod:`ase_mlff.aot` keys its packages by
        it and traces inside :meth:`pinned`).
        """
        if self._pinned_pairwise is not None:
            return self._pinned_pairwise
        return self.pairwise_min_edges is not None and n_edges >= self.pairwise_min_edges

    @contextmanager
    def pinned(self, pairwise: bool | None):
        """Within the block :meth:`pairwise` answers ``pairwise`` whatever the size (None: by size)."""
        before = self._pinned_pairwise
        self._pinned_pairwise = pairwise
        try:
            yield self
        finally:
            self._pinned_pairwise = before

    def check_numbers(self, numbers) -> None:
        """Error naming the elements the model does not cover."""
        unknown = sorted({int(z) for z in numbers} - set(self.atomic_numbers))
        if unknown:
            names = [chemical_symbols[z] for z in unknown]
            raise ValueError(
                f"element(s) {', '.join(names)} not covered by this {self.architecture} model, "
                f"which was trained on {', '.join(self.species)}; use a model trained on "
                f"these elements"
            )

    @property
    def atomic_numbers(self) -> list[int]:
        return [atomic_numbers[s] for s in self.species]

    def set_energy_reference(self, element_energy: dict[str | int, float],
                             scale: float = 1.0, shift: float = 0.0) -> None:
        """Per-element reference energies (eV) and the scale/shift of the network output."""
        table = torch.zeros_like(self.element_energy)
        for key, value in element_energy.items():
            z = atomic_numbers[key] if isinstance(key, str) else int(key)
            table[z] = float(value)
        self.element_energy.copy_(table)
        self.scale.fill_(float(scale))
        self.shift.fill_(float(shift))

    def set_repulsion(self, radii: dict | None) -> None:
        """Add the switched ZBL repulsion (:mod:`ase_mlff.models.repulsion`) with ``radii``
        {(element, element): (inner, outer) Å}, e.g. from
        :func:`~ase_mlff.models.repulsion.radii_from_data` of the training frames; None removes it."""
        from .repulsion import ZBLRepulsion

        if radii is None:
            self.repulsion = None
            return
        device = self.species_index.device
        self.repulsion = ZBLRepulsion(self.species, radii).to(device)

    def energy_reference(self) -> dict[str, float]:
        return {s: float(self.element_energy[z]) for s, z in zip(self.species, self.atomic_numbers)}

    def extra_repr(self) -> str:
        return f"species={self.species}, cutoff={self.cutoff}"
