"""HDF5 output of an MD run: writer (buffered, flushed regularly) and reader.

The layout is documented in ``ase_mlff/md/SCHEMA.md`` (and the README). In short:
frame-major resizable datasets under ``/frames`` (one row per recorded step),
per-atom constants at the root, run metadata as root attributes, the exact
state to restart from under ``/checkpoint``, and the energy-conservation
verdict under ``/report``.

Frames are collected in preallocated numpy buffers and written in blocks: one
``resize`` and one slice assignment per dataset per flush, never per step, so
the file costs almost nothing inside the MD loop. After every flush the file
on disk is complete and consistent (frames, checkpoint, ``n_frames``), so a run
killed with SIGKILL leaves a readable file up to its last flush.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ..units import fs

FORMAT = "ase-mlff-md"
FORMAT_VERSION = 1

#: per-frame datasets: name -> (per-atom?, trailing shape, dtype, units)
FRAME_FIELDS = {
    "step": (False, (), np.int64, "1"),
    "time": (False, (), np.float64, "ps"),
    "positions": (True, (3,), np.float64, "Å"),
    "velocities": (True, (3,), np.float64, "Å/fs"),
    "forces": (True, (3,), np.float64, "eV/Å"),
    "potential_energy": (False, (), np.float64, "eV"),
    "kinetic_energy": (False, (), np.float64, "eV"),
    "total_energy": (False, (), np.float64, "eV"),
    "temperature": (False, (), np.float64, "K"),
}


def _chunk_rows(n_atoms: int) -> int:
    # about 256 KiB per chunk of a per-atom dataset, at least one frame
    return int(max(1, min(1024, 256 * 1024 // (24 * max(n_atoms, 1)))))


class H5Writer:
    """Append MD frames to an HDF5 file.

    Args:
        path: file to create (mode "w") or continue (mode "a", see :meth:`resume`).
        atoms: the system (numbers, masses, cell, pbc are stored once).
        metadata: run metadata, stored as root attributes (dicts and lists as JSON).
        flush_every: frames collected in memory before they are written and flushed.
        flush_seconds: also flush when this much wall time passed since the last flush.
    """

    def __init__(self, path: str | os.PathLike, atoms: Atoms, metadata: dict,
                 flush_every: int = 100, flush_seconds: float = 30.0, mode: str = "w"):
        import h5py

        if flush_every < 1:
            raise ValueError(f"flush_every must be at least 1 frame, got {flush_every}")
        self.path = Path(path)
        self.n_atoms = len(atoms)
        self.flush_every = int(flush_every)
        self.flush_seconds = float(flush_seconds)
        if mode == "w":
            self.file = h5py.File(self.path, "w")
            self._create(atoms, metadata)
        elif mode == "a":
            self.file = h5py.File(self.path, "a")
            check_format(self.file, self.path)
            for key, value in metadata.items():
                self.file.attrs[key] = _attr(value)
        else:
            raise ValueError(f"mode must be 'w' or 'a', got {mode!r}")
        self.frames = self.file["frames"]
        self.n_frames = int(self.frames["step"].shape[0])
        self._buffers = {
            name: np.empty((self.flush_every, *((self.n_atoms,) if per_atom else ()), *shape), dtype)
            for name, (per_atom, shape, dtype, _) in FRAME_FIELDS.items()
        }
        self._n_buffered = 0
        self._last_flush = time.monotonic()

    def _create(self, atoms: Atoms, metadata: dict) -> None:
        f = self.file
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for key, value in metadata.items():
            f.attrs[key] = _attr(value)
        f.attrs["status"] = "running"
        f.create_dataset("numbers", data=atoms.numbers.astype(np.int32))
        f.create_dataset("masses", data=atoms.get_masses()).attrs["units"] = "amu"
        f.create_dataset("cell", data=np.asarray(atoms.cell[:], dtype=np.float64)).attrs["units"] = "Å"
        f.create_dataset("pbc", data=np.asarray(atoms.pbc, dtype=bool))
        frames = f.create_group("frames")
        rows = _chunk_rows(self.n_atoms)
        for name, (per_atom, shape, dtype, units) in FRAME_FIELDS.items():
            tail = ((self.n_atoms,) if per_atom else ()) + shape
            ds = frames.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                       chunks=(rows if per_atom else 4096, *tail))
            ds.attrs["units"] = units
        f.flush()

    def append(self, step: int, time_ps: float, positions, velocities_A_per_fs, forces,
               potential_energy: float, kinetic_energy: float, temperature_K: float) -> None:
        """Buffer one frame (arrays are copied)."""
        i = self._n_buffered
        b = self._buffers
        b["step"][i] = step
        b["time"][i] = time_ps
        b["positions"][i] = positions
        b["velocities"][i] = velocities_A_per_fs
        b["forces"][i] = forces
        b["potential_energy"][i] = potential_energy
        b["kinetic_energy"][i] = kinetic_energy
        b["total_energy"][i] = potential_energy + kinetic_energy
        b["temperature"][i] = temperature_K
        self._n_buffered = i + 1

    def due(self) -> bool:
        """True when the buffered frames should be written now."""
        return (self._n_buffered >= self.flush_every
                or self.n_frames == 0  # the first frame at once: a readable file from the start
                or time.monotonic() - self._last_flush > self.flush_seconds)

    def flush(self, checkpoint: dict | None = None) -> None:
        """Write buffered frames and the restart checkpoint, then flush the file to disk.

        Args:
            checkpoint: ``step``, ``positions`` [N,3] Å, ``momenta`` [N,3] ASE units,
                ``rng_state`` and ``thermostat`` (JSON-compatible) describing the
                state right after the last buffered frame.
        """
        n = self._n_buffered
        if n:
            lo, hi = self.n_frames, self.n_frames + n
            for name, buffer in self._buffers.items():
                ds = self.frames[name]
                ds.resize(hi, axis=0)
                ds[lo:hi] = buffer[:n]
            self.n_frames = hi
            self._n_buffered = 0
        if checkpoint is not None:
            self._write_checkpoint(checkpoint)
        self.file.attrs["n_frames"] = self.n_frames
        self.file.flush()
        self._last_flush = time.monotonic()

    def _write_checkpoint(self, state: dict) -> None:
        # Two slots, written in turn. Dataset bytes reach the file at once while
        # attributes wait in HDF5's metadata cache until a flush, so rewriting
        # one state in place let a SIGKILL leave new positions under an old
        # step. The new state goes into the idle slot, which is flushed before
        # the "slot" pointer moves to it: a kill at any moment leaves one
        # complete, consistent state.
        group = self.file.require_group("checkpoint")
        name = "b" if group.attrs.get("slot") == "a" else "a"
        slot = group.require_group(name)
        for key, unit in (("positions", "Å"), ("momenta", "ASE (amu·Å/ASE time)")):
            data = np.asarray(state[key], dtype=np.float64)
            if key in slot:
                slot[key][...] = data
            else:
                slot.create_dataset(key, data=data).attrs["units"] = unit
        slot.attrs["step"] = int(state["step"])
        slot.attrs["rng_state"] = json.dumps(state.get("rng_state"))
        slot.attrs["thermostat"] = json.dumps(state.get("thermostat") or {})
        self.file.flush()
        group.attrs["slot"] = name
        group.attrs["step"] = int(state["step"])  # mirror of the current slot's step, for readers

    def set_attrs(self, **attrs) -> None:
        for key, value in attrs.items():
            self.file.attrs[key] = _attr(value)

    def write_report(self, report: dict) -> None:
        group = self.file.require_group("report")
        for key, value in report.items():
            group.attrs[key] = _attr(value)

    def close(self, checkpoint: dict | None = None) -> None:
        if self.file.id.valid:
            self.flush(checkpoint)
            self.file.close()

    def truncate_after(self, step: int) -> None:
        """Drop frames recorded after ``step`` (frames written past the last checkpoint)."""
        steps = self.frames["step"][:]
        keep = int(np.searchsorted(steps, step, side="right"))
        if keep < self.n_frames:
            for name in FRAME_FIELDS:
                self.frames[name].resize(keep, axis=0)
            self.n_frames = keep
            self.file.attrs["n_frames"] = keep
            self.file.flush()


def _attr(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if value is None:
        return "null"
    return value


def _decode(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value[:1] in "{[" or value == "null":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def check_format(f, path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is an HDF5 file but not an ase-mlff MD file (no '{FORMAT}' "
                         "format attribute); such files are written by 'mlff-md run'")
    version = int(f.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has MD file format version {version}; this ase-mlff reads up to "
                         f"{FORMAT_VERSION}: upgrade ase-mlff")


def _open(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        # no file lock: a report or conversion may read a file a running simulation is
        # writing (it sees the frames up to the last flush)
        f = h5py.File(path, "r", locking=False)
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file ({error})") from None
    try:
        check_format(f, path)
    except ValueError:
        f.close()
        raise
    return f


def read_metadata(path: str | os.PathLike) -> dict:
    """Root attributes of an MD file, JSON values decoded."""
    with _open(path) as f:
        return {key: _decode(value) for key, value in f.attrs.items()}


def read_series(path: str | os.PathLike, names=("step", "time", "potential_energy", "kinetic_energy",
                                                 "total_energy", "temperature")) -> dict:
    """Per-frame scalar series (and ``n_atoms``, ``metadata``, ``report``) of an MD file."""
    with _open(path) as f:
        series = {name: f["frames"][name][:] for name in names}
        series["n_atoms"] = int(f["numbers"].shape[0])
        series["metadata"] = {key: _decode(value) for key, value in f.attrs.items()}
        series["report"] = ({key: _decode(v) for key, v in f["report"].attrs.items()}
                            if "report" in f else {})
    return series


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The restart state stored at the last flush."""
    with _open(path) as f:
        if "checkpoint" not in f:
            raise ValueError(f"{path} has no checkpoint (the run wrote no frames before it stopped); "
                             "start a new run instead of --restart")
        group = f["checkpoint"]
        group = group[group.attrs["slot"]]
        return {
            "step": int(group.attrs["step"]),
            "positions": group["positions"][:],
            "momenta": group["momenta"][:],
            "rng_state": json.loads(group.attrs["rng_state"]),
            "thermostat": json.loads(group.attrs["thermostat"]),
            "numbers": f["numbers"][:],
            "cell": f["cell"][:],
            "pbc": f["pbc"][:],
            "metadata": {key: _decode(value) for key, value in f.attrs.items()},
        }


def read_frames(path: str | os.PathLike, index=slice(None)) -> list[Atoms]:
    """Frames as Atoms with velocities, energy and forces (a single-point calculator).

    Args:
        index: int or slice over frames (negative values count from the end).
    """
    with _open(path) as f:
        frames = f["frames"]
        n = frames["step"].shape[0]
        rows = list(range(n)[index]) if isinstance(index, slice) else [range(n)[index]]
        if not rows:
            return []
        numbers, cell, pbc = f["numbers"][:], f["cell"][:], f["pbc"][:]
        masses = f["masses"][:]
        lo, hi = min(rows), max(rows) + 1  # one contiguous read, then pick
        data = {name: frames[name][lo:hi] for name in FRAME_FIELDS}
    images = []
    for row in rows:
        k = row - lo
        atoms = Atoms(numbers=numbers, positions=data["positions"][k], cell=cell, pbc=pbc)
        atoms.set_masses(masses)
        atoms.set_velocities(data["velocities"][k] / fs)  # Å/fs -> Å per ASE time unit
        atoms.info["step"] = int(data["step"][k])
        atoms.info["time_ps"] = float(data["time"][k])
        atoms.calc = SinglePointCalculator(atoms, energy=float(data["potential_energy"][k]),
                                           free_energy=float(data["potential_energy"][k]),
                                           forces=data["forces"][k])
        images.append(atoms)
    return images
