"""Reference data (energies and, usually, forces) from files, in eV and Å.

Readers:

* anything ``ase.io.read`` reads that carries energies (extxyz, ASE db, .traj):
  the energy and forces come from the attached single-point calculator, or
  from ``atoms.info`` / ``atoms.arrays`` under ``energy_key`` / ``forces_key``;
* ``.npz`` in the MD17 layout (``R``, ``E``, ``F``, ``z``) or the rMD17 layout
  (``coords``, ``energies``, ``forces``, ``nuclear_charges``);
* ``.h5`` / ``.hdf5`` trajectories written by ``mlff-md run`` (frame-major
  datasets ``positions``, ``forces``, ``potential_energy``, ``atomic_numbers``,
  ``cell``, optionally ``pbc``), so a model can be trained on its own MD.

Units are converted once, here, through :mod:`ase_mlff.units`: a source in
kcal/mol and Å gives energies × 0.04336 eV and forces × 0.04336 eV/Å.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from ..units import energy_factor, length_factor
from .flat import FlatForces, FlatFrames

#: file suffixes handled by the dedicated readers (everything else goes to ase.io.read)
NPZ_SUFFIXES = (".npz",)
HDF5_SUFFIXES = (".h5", ".hdf5")
#: compressed files, read through these openers
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass(frozen=True)
class Dataset:
    """Frames with reference labels, in eV and Å, held as flat arrays.

    Attributes:
        atoms: the structures (positions Å, numbers, cell Å, pbc), no calculators: a list of
            ``Atoms`` is stored as :class:`~ase_mlff.training.flat.FlatFrames` (flat arrays;
            ``atoms[k]`` builds frame k's ``Atoms`` on demand).
        energy: [n_frames] eV, total energies.
        forces: per frame [n_atoms, 3] eV/Å (stored as :class:`~ase_mlff.training.flat.FlatForces`),
            or None (energy-only data).
        info: per-frame metadata (``atoms.info`` for ASE formats, empty otherwise).
        source: where the frames came from (for messages and metadata).
        file_index: per frame, its index in ``source`` (None: frame k is frame k of the
            file); kept through :meth:`subset`, so that messages about a training or
            test set name the frames a user can find in the file.
    """

    atoms: FlatFrames
    energy: np.ndarray
    forces: FlatForces | None
    info: list[dict] = field(default_factory=list)
    source: str = "<memory>"
    file_index: list[int] | None = None

    def __post_init__(self):
        # frozen: normalise the containers once, here
        frames = FlatFrames.from_atoms(self.atoms)
        object.__setattr__(self, "atoms", frames)
        object.__setattr__(self, "energy", np.asarray(self.energy, dtype=np.float64).reshape(-1))
        if self.forces is not None:
            object.__setattr__(self, "forces", FlatForces.from_list(self.forces, frames.offsets))
        if len(self.energy) != len(frames):
            raise ValueError(f"{self.source}: {len(self.energy)} energies for {len(frames)} frames")

    def __len__(self) -> int:
        return len(self.atoms)

    @property
    def has_forces(self) -> bool:
        return self.forces is not None

    @property
    def species(self) -> list[str]:
        """Elements present, sorted by atomic number."""
        return [chemical_symbols[int(z)] for z in np.unique(self.atoms.numbers)]

    @property
    def n_atoms(self) -> np.ndarray:
        return self.atoms.n_atoms

    def subset(self, indices: Sequence[int]) -> Dataset:
        indices = [int(k) for k in indices]
        file_index = self.file_indices()
        return Dataset(
            atoms=self.atoms.subset(indices),
            energy=self.energy[indices],
            forces=None if self.forces is None else self.forces.subset(indices),
            info=[self.info[k] for k in indices] if self.info else [],
            source=self.source,
            file_index=[file_index[k] for k in indices],
        )

    def file_indices(self) -> list[int]:
        """Index in the data file of every frame."""
        return list(range(len(self))) if self.file_index is None else list(self.file_index)

    def fingerprint(self) -> str:
        """sha256 of numbers, positions, cells, pbc and labels (identifies the training data).

        Frame by frame (numbers int64, positions, cell, pbc, energy, forces), so the hash of
        a data file is the same however it was read.
        """
        digest = hashlib.sha256()
        frames, offsets = self.atoms, self.atoms.offsets
        for k in range(len(self)):
            atoms = slice(offsets[k], offsets[k + 1])
            digest.update(frames.numbers[atoms].tobytes())
            digest.update(frames.positions[atoms].tobytes())
            digest.update(frames.cell[k].tobytes())
            digest.update(frames.pbc[k].tobytes())
            digest.update(np.float64(self.energy[k]).tobytes())
            if self.forces is not None:
                digest.update(self.forces.values[atoms].tobytes())
        return digest.hexdigest()


def from_atoms(frames: Sequence[Atoms], energy_key: str = "energy", forces_key: str = "forces",
               source: str = "<memory>", energy_unit: str = "eV", length_unit: str = "Å") -> Dataset:
    """Labels from each frame's single-point calculator, else ``info``/``arrays`` keys.

    Args:
        energy_key: name of the energy in ``atoms.info`` when there is no calculator.
        forces_key: name of the per-atom forces in ``atoms.arrays`` when there is no calculator.
    """
    frames = list(frames)
    if not frames:
        raise ValueError(f"{source} holds no frames")
    energies, forces, infos, structures = [], [], [], []
    for k, a in enumerate(frames):
        results = dict(a.calc.results) if a.calc is not None else {}
        energy = results.get("energy", a.info.get(energy_key))
        if energy is None:
            energy = results.get("free_energy")
        if energy is None:
            raise ValueError(
                f"frame {k} of {source} has no energy (no calculator result and no "
                f"info[{energy_key!r}]); training data needs reference energies "
                "(pass energy_key / --energy-key if it is stored under another name)"
            )
        force = results.get("forces", a.arrays.get(forces_key))
        energies.append(float(np.asarray(energy).reshape(-1)[0]))
        forces.append(None if force is None else np.array(force, dtype=np.float64))
        info = {key: value for key, value in a.info.items() if key != energy_key}
        infos.append(info)
        structures.append(Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc))
    have = [f is not None for f in forces]
    if any(have) and not all(have):
        missing = [k for k, h in enumerate(have) if not h]
        raise ValueError(
            f"{source}: {len(missing)} of {len(frames)} frames have no forces (first: frame "
            f"{missing[0]}); use frames that all carry forces, or none (energy-only training)"
        )
    return _converted(structures, np.array(energies), forces if all(have) else None, infos,
                      source, energy_unit, length_unit)


def _converted(atoms, energy, forces, info, source, energy_unit, length_unit) -> Dataset:
    e_factor, l_factor = energy_factor(energy_unit), length_factor(length_unit)
    atoms = FlatFrames.from_atoms(atoms)
    if l_factor != 1.0:
        atoms = atoms.scaled(l_factor)
    energy = np.asarray(energy, dtype=np.float64) * e_factor
    if forces is not None:
        forces = FlatForces.from_list(forces, atoms.offsets)
        if e_factor / l_factor != 1.0:
            forces = FlatForces(forces.values * (e_factor / l_factor), forces.offsets)
    return Dataset(atoms, energy, forces, info, source)


def read_dataset(path: str | os.PathLike, index: str = ":", energy_unit: str = "eV",
                 length_unit: str = "Å", energy_key: str = "energy",
                 forces_key: str = "forces", format: str | None = None,
                 cache_dir: str | os.PathLike | bool | None = None,
                 echo: Callable[[str], None] | None = None) -> Dataset:
    """Read a data file into a :class:`Dataset` in eV and Å.

    Extended XYZ in the common layout goes through the fast reader
    (:mod:`ase_mlff.training.extxyz`), everything else through ``ase.io.read``.
    Text files of at least :data:`~ase_mlff.training.cache.MIN_CACHED_BYTES` are
    cached as flat arrays (:mod:`ase_mlff.training.cache`), so a second read takes
    a second.

    Args:
        index: ASE-style frame selection (``":"``, ``"0:100"``, ``"::10"``).
        energy_unit: unit of the energies (and of the energy in the force unit) in the file.
        length_unit: unit of positions and cell in the file.
        format: ASE format name, when the suffix does not tell it.
        cache_dir: cache folder; None: :func:`~ase_mlff.training.cache.default_cache_dir`
            for large files only; False: no cache; a folder: cache whatever the size.
        echo: where the one line about a stale or corrupt cache goes (default: stderr).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"data file {path} is a folder; give a file")
    suffix = path.suffix.lower()
    if suffix in NPZ_SUFFIXES:
        data = _read_npz(path, energy_unit, length_unit)
    elif suffix in HDF5_SUFFIXES and format is None:
        data = _read_hdf5(path, energy_unit, length_unit)
    else:
        from . import cache

        def read() -> dict:
            return _read_text(path, format, energy_key, forces_key)

        if cache_dir is None and path.stat().st_size >= cache.MIN_CACHED_BYTES:
            cache_dir = cache.default_cache_dir()
        if cache_dir is None or cache_dir is False:
            arrays = read()
        else:
            arrays, _ = cache.cached_read(path, read, energy_key, forces_key, cache_dir, echo)
        frames = FlatFrames(arrays["numbers"], arrays["positions"], arrays["offsets"], arrays["cell"],
                            arrays["pbc"])
        forces = arrays.get("forces")
        data = _converted(frames, arrays["energy"], None if forces is None else FlatForces(forces, frames.offsets),
                          arrays["info"], str(path), energy_unit, length_unit)
    if index != ":":
        data = data.subset(_select(len(data), index))
    return data


_XYZ_SUFFIXES = (".xyz", ".extxyz")


def _read_text(path: Path, format: str | None, energy_key: str, forces_key: str) -> dict:
    """Flat arrays (file units) of an ASE-readable file: the fast extxyz reader, else ase.io.read."""
    from . import extxyz

    parsed = None
    inner = Path(path.stem).suffix.lower() if path.suffix.lower() in _OPENERS else path.suffix.lower()
    if format in (None, "extxyz") and inner in _XYZ_SUFFIXES:
        opener = _OPENERS.get(path.suffix.lower(), open)
        try:
            with opener(path, "rb") as handle:
                text = handle.read().decode()
        except (OSError, EOFError, UnicodeDecodeError):
            text = None  # ASE's reader gives the message
        parsed = extxyz.parse(text, energy_key, forces_key) if text is not None else None
    if parsed is not None:
        return {"numbers": parsed.numbers, "positions": parsed.positions, "offsets": parsed.offsets,
                "cell": parsed.cell, "pbc": parsed.pbc, "energy": parsed.energy, "forces": parsed.forces,
                "info": parsed.info}
    try:
        atoms = _ase_read(path, format)
    except Exception as error:  # ase raises many types for unreadable files
        raise ValueError(
            f"could not read {path} with ase.io.read: {error}; training data can be any "
            "ASE-readable file with energies, an MD17/rMD17 .npz, or an mlff-md .h5"
        ) from None
    data = from_atoms(atoms, energy_key, forces_key, str(path))
    frames = data.atoms
    return {"numbers": frames.numbers, "positions": frames.positions, "offsets": frames.offsets,
            "cell": frames.cell, "pbc": frames.pbc, "energy": data.energy,
            "forces": None if data.forces is None else data.forces.values, "info": data.info}


def _ase_read(path: Path, format: str | None) -> list[Atoms]:
    """``ase.io.read`` of every frame; compressed files are decompressed first.

    ASE reads ``.gz`` directly but seeks through the compressed stream for
    every frame, which takes minutes for a few thousand frames; a temporary
    plain copy takes a fraction of a second.
    """
    import shutil
    import tempfile

    from ase.io import read

    opener = _OPENERS.get(path.suffix.lower())
    if opener is None:
        return read(path, index=":", format=format)
    with tempfile.TemporaryDirectory(prefix="ase-mlff-") as folder:
        plain = Path(folder) / path.stem  # keeps the inner suffix for format detection
        with opener(path, "rb") as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target)
        return read(plain, index=":", format=format)


def _select(n: int, index: str) -> list[int]:
    parts = index.split(":")
    try:
        if len(parts) == 1:
            return [range(n)[int(parts[0])]]
        if len(parts) > 3:
            raise ValueError
        numbers = [int(p) if p else None for p in parts]
    except (ValueError, IndexError):
        raise ValueError(f"bad frame selection {index!r} for {n} frames; use e.g. ':', '0:100', '::10'") from None
    return list(range(n))[slice(*numbers)]


_NPZ_LAYOUTS = (
    # (positions, energies, forces, numbers)
    ("R", "E", "F", "z"),  # MD17 / sGDML
    ("coords", "energies", "forces", "nuclear_charges"),  # rMD17
)


def _read_npz(path: Path, energy_unit: str, length_unit: str) -> Dataset:
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        for pos_key, e_key, f_key, z_key in _NPZ_LAYOUTS:
            if {pos_key, e_key, z_key} <= keys:
                positions = np.asarray(archive[pos_key], dtype=np.float64)
                energy = np.asarray(archive[e_key], dtype=np.float64).reshape(-1)
                numbers = np.asarray(archive[z_key]).astype(np.int64)
                forces = np.asarray(archive[f_key], dtype=np.float64) if f_key in keys else None
                break
        else:
            raise ValueError(
                f"{path} has arrays {sorted(keys)}; expected the MD17 layout (R, E, F, z) or "
                "the rMD17 layout (coords, energies, forces, nuclear_charges)"
            )
    if positions.ndim != 3 or positions.shape[0] != energy.shape[0]:
        raise ValueError(
            f"{path}: positions have shape {positions.shape} and energies {energy.shape}; "
            "expected [n_frames, n_atoms, 3] and [n_frames]"
        )
    numbers = numbers.reshape(-1) if numbers.ndim == 1 else numbers
    atoms = []
    for k in range(len(energy)):
        z = numbers if numbers.ndim == 1 else numbers[k]
        keep = z > 0  # padded layouts mark missing atoms with Z = 0
        atoms.append(Atoms(numbers=z[keep], positions=positions[k][keep]))
    force_list = None
    if forces is not None:
        force_list = []
        for k in range(len(energy)):
            z = numbers if numbers.ndim == 1 else numbers[k]
            force_list.append(forces[k][z > 0])
    return _converted(atoms, energy, force_list, [{} for _ in atoms], str(path),
                      energy_unit, length_unit)


def _read_hdf5(path: Path, energy_unit: str, length_unit: str) -> Dataset:
    """The frames of an ``mlff-md run`` file, read by :mod:`ase_mlff.md.h5` (any format version).

    Every system of a many-system run contributes its frames, in system order
    (frame indices count through system 0, then 1, ...).
    """
    from ..md.h5 import n_systems, read_frames

    atoms = [a for k in range(n_systems(path)) for a in read_frames(path, slice(None), system=k)]
    if not atoms:
        raise ValueError(f"{path} holds no frames to train on")
    energy = np.array([a.get_potential_energy() for a in atoms], dtype=np.float64)
    forces = [a.get_forces(apply_constraint=False) for a in atoms]
    for a in atoms:  # the training set is geometry and labels only
        a.calc = None
        a.set_constraint()
        del a.arrays["momenta"]
    return _converted(atoms, energy, forces, [{} for _ in atoms], str(path), energy_unit, length_unit)


def _frames(indices: list[int]) -> str:
    return f"{indices[:10]}{' ...' if len(indices) > 10 else ''}"


def _frame_key(frames: FlatFrames, k: int) -> bytes:
    # positions rounded to 1e-6 Å: identical geometries written by different tools collide
    return hashlib.sha1(frames.numbers_of(k).tobytes() + np.round(frames.positions_of(k), 6).tobytes()
                        + np.round(frames.cell[k], 6).tobytes()).digest()


def check_labels(data: Dataset, name: str = "data") -> None:
    """Refuse NaN/inf positions or labels, naming the frames of the file.

    (Forces of the wrong shape cannot reach here: :class:`Dataset` refuses them.)
    """
    if len(data) == 0:
        raise ValueError(f"{name} ({data.source}) holds no frames")
    where = data.file_indices()
    frames = data.atoms
    bad_atoms = ~np.isfinite(frames.positions).all(axis=1)
    if data.forces is not None:
        bad_atoms |= ~np.isfinite(data.forces.values).all(axis=1)
    bad = set(np.flatnonzero(~np.isfinite(data.energy)).tolist())
    bad |= set(np.unique(frames.frame_of_atom[bad_atoms]).tolist())
    if bad:
        bad = sorted({where[k] for k in bad})
        raise ValueError(
            f"{name} ({data.source}): {len(bad)} frame(s) have NaN or infinite positions, "
            f"energies or forces (frames {_frames(bad)} of the file); remove them from the data file"
        )


def check_dataset(data: Dataset, species: Sequence[str] | None = None, name: str = "data") -> None:
    """Refuse data a model cannot learn from: NaN/inf labels, duplicates, uncovered elements.

    Messages name frames by their index in the data file (:meth:`Dataset.file_indices`).

    Args:
        species: elements the model covers; frames with any other element are an error.
        name: what to call the data in messages ("training set", ...).
    """
    check_labels(data, name)
    where = data.file_indices()
    frames = data.atoms
    seen: dict[bytes, int] = {}
    duplicates = []
    for k in range(len(frames)):
        key = _frame_key(frames, k)
        if key in seen:
            duplicates.append((where[seen[key]], where[k]))
        else:
            seen[key] = k
    if duplicates:
        pairs = ", ".join(f"{i}={j}" for i, j in duplicates[:5])
        raise ValueError(
            f"{name} ({data.source}): {len(duplicates)} frame(s) duplicate an earlier frame "
            f"(frames of the file: {pairs}{' ...' if len(duplicates) > 5 else ''}); duplicates leak between "
            "train and test and weight some geometries twice: remove them"
        )
    if species is not None:
        covered = set(species)
        uncovered = sorted(set(data.species) - covered)
        if uncovered:
            allowed = np.array([atomic_numbers[s] for s in covered if s in atomic_numbers], dtype=np.int64)
            outside = ~np.isin(frames.numbers, allowed)
            bad = np.unique(frames.frame_of_atom[outside])
            raise ValueError(
                f"{name} ({data.source}) contains element(s) {', '.join(uncovered)} in "
                f"{len(bad)} frame(s) (first: frame {where[int(bad[0])]} of the file) that the model, covering "
                f"{', '.join(species)}, cannot represent; train on data whose elements the "
                "model covers or add them to --species"
            )
