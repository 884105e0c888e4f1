"""Files of a relaxation: one ``.traj`` per structure while it runs, the relaxed structures at the end.

Both are written to a temporary file beside the target and renamed over it
only when complete, so a crash never leaves half a file under the user's
name. Existing files are refused unless ``overwrite``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from ..files import atomic_write, existing
from ..md.writers import output_paths


def trajectory_paths(trajectory: str | os.PathLike, n_systems: int) -> list[Path]:
    """``relax.traj`` for one structure; ``relax.<k>.traj`` (k zero-padded) for many, as ``mlff-md run``."""
    return output_paths(trajectory, n_systems)["traj"]


def check_free(paths: Sequence[Path], overwrite: bool, what: str) -> None:
    """Refuse folders, and existing files unless ``overwrite``; prove the folders take files."""
    for path in paths:
        if path.is_dir():
            raise ValueError(f"{what} {path} is a folder; give a file name")
    existing(paths, overwrite, f"{what} exists",
             "choose another name or pass --overwrite (overwrite=True) to replace it")
    for folder in {p.parent for p in paths}:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".mlff-relax-probe-"):
                pass
        except OSError as error:
            raise ValueError(f"cannot write {what} into {folder} ({error.strerror or type(error).__name__}); "
                             "choose another folder") from None


def output_format(path: str | os.PathLike, n_structures: int) -> str:
    """ASE's name of the format ``path`` will be written in; refuses formats that cannot hold them all."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    try:
        name = filetype(os.fspath(path), read=False)
        io = ioformats[name]
    except (UnknownFileTypeError, KeyError):
        raise ValueError(f"cannot tell the file format of {path} from its name; use an extension ASE writes "
                         "(.extxyz, .xyz, .traj, .cif, .vasp, ...)") from None
    if not io.can_write:
        raise ValueError(f"ASE cannot write the {name} format of {path}; use .extxyz or .traj")
    if io.single and n_structures > 1:
        raise ValueError(f"the {name} format of {path} holds one structure, but there are {n_structures}; "
                         "use .extxyz or .traj")
    return name


def write_structures(path: str | os.PathLike, structures: Sequence[Atoms], *, overwrite: bool = False) -> Path:
    """Write ``structures`` to ``path`` (any format ASE writes, chosen by the name), atomically."""
    import ase.io

    path = Path(path)
    structures = list(structures)
    name = output_format(path, len(structures))
    check_free([path], overwrite, "output file")

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # format writers warn about harmless things (e.g. dropped info)
            ase.io.write(tmp, structures if len(structures) > 1 else structures[0], format=name)

    return atomic_write(path, write)


class Trajectories:
    """One ASE ``Trajectory`` per structure, written under temporary names and renamed by :meth:`close`.

    Args:
        paths: final file names, one per structure.
        templates: the structures (numbers, pbc, constraints are taken from them).
    """

    def __init__(self, paths: Sequence[Path], templates: Sequence[Atoms]):
        from ase.io.trajectory import Trajectory

        self.paths = list(paths)
        self.tmp = []
        self.trajs = []
        try:
            for path, atoms in zip(self.paths, templates):
                handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                os.close(handle)
                self.tmp.append(tmp)
                self.trajs.append(Trajectory(tmp, "w", atoms))
        except BaseException:
            self.discard()
            raise
        self.templates = [Atoms(numbers=a.numbers, cell=a.cell, pbc=a.pbc) for a in templates]

    def write(self, k: int, positions: np.ndarray, cell: np.ndarray, energy: float, forces: np.ndarray,
              stress: np.ndarray | None) -> None:
        """Frame of structure ``k``: positions [n, 3] Å, cell [3, 3] Å, eV, eV/Å, eV/Å³ (Voigt or None)."""
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = self.templates[k].copy()
        atoms.cell = cell
        atoms.positions = positions
        results = {"energy": energy, "free_energy": energy, "forces": forces}
        if stress is not None:
            results["stress"] = stress
        atoms.calc = SinglePointCalculator(atoms, **results)
        self.trajs[k].write(atoms)

    def close(self) -> list[Path]:
        """Finish every file and give it its name."""
        for traj in self.trajs:
            traj.close()
        umask = os.umask(0)
        os.umask(umask)
        for tmp, path in zip(self.tmp, self.paths):
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        self.tmp = []
        return self.paths

    def discard(self) -> None:
        """After an error: close and remove the temporary files, leaving no partial trajectory."""
        for traj in self.trajs:
            try:
                traj.close()
            except Exception:  # noqa: BLE001 - cleaning up after another error
                pass
        for tmp in self.tmp:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.tmp = []
