"""HDF5 output of an MD run (format ``ase-mlff-md``): writer and readers.

Version 3 (written now) is version 2 plus, for NPT runs, the per-frame cell
series ``frames/cell``, ``volume`` and ``pressure`` and the cell in each
checkpoint slot; runs with a fixed cell write no cell series (the cell is
the one stored once per system). Version 2 holds many systems: one group ``/systems/<k>`` per
system, each with the layout a version-1 file had at its root (``frames/*``,
``numbers``, ``masses``, ``cell``, ``pbc``, plus ``fixed`` and the system's
status and report), the run's settings as root attributes, and one restart
checkpoint for the whole batch under ``/checkpoint``. Version-1 files (one
system at the root) stay readable by every reader here; the layout is
documented in ``ase_mlff/md/SCHEMA.md``.

Frames are collected in preallocated numpy buffers and written in blocks: one
``resize`` and one slice assignment per dataset per flush, never per step.
After every flush the file on disk is complete and consistent (frames,
checkpoint, ``n_frames``), so a run killed with SIGKILL leaves a readable
file up to its last flush.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from ..units import fs

FORMAT = "ase-mlff-md"
FORMAT_VERSION = 3

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
#: version 2 adds the conserved energy of thermostatted runs
FRAME_FIELDS_V2 = {**FRAME_FIELDS, "conserved_energy": (False, (), np.float64, "eV")}
#: version 3 adds, for NPT runs only, each frame's cell, volume and instantaneous pressure
#: (kinetic term included, see ase_mlff/md/barostat.py)
CELL_FIELDS = {"cell": (False, (3, 3), np.float64, "Å"), "volume": (False, (), np.float64, "Å^3"),
               "pressure": (False, (), np.float64, "eV/Å^3")}
FRAME_FIELDS_V3 = {**FRAME_FIELDS_V2, **CELL_FIELDS}


def _fields(frames_group) -> dict:
    """The per-frame datasets a file's ``frames`` group holds (v2 and v3 without cell series: FRAME_FIELDS_V2)."""
    return {name: spec for name, spec in FRAME_FIELDS_V3.items() if name in frames_group}


def _chunk_rows(n_atoms: int) -> int:
    # about 256 KiB per chunk of a per-atom dataset, at least one frame
    return int(max(1, min(1024, 256 * 1024 // (24 * max(n_atoms, 1)))))


@dataclass(frozen=True)
class SystemInfo:
    """What is stored once per system."""

    label: str
    numbers: np.ndarray
    masses: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    fixed: np.ndarray
    dof: float
    seed: int
    attrs: dict


class _Frames:
    """Buffered frames of one system's ``frames`` group."""

    def __init__(self, group, n_atoms: int, flush_every: int):
        self.group, self.n_atoms = group, n_atoms
        self.n_frames = int(group["step"].shape[0])
        self.buffers = {name: np.empty((flush_every, *((n_atoms,) if per_atom else ()), *shape), dtype)
                        for name, (per_atom, shape, dtype, _) in _fields(group).items()}
        self.n_buffered = 0

    def append(self, row: dict) -> None:
        i = self.n_buffered
        for name, buffer in self.buffers.items():
            buffer[i] = row[name]
        self.n_buffered = i + 1

    def write(self) -> None:
        n = self.n_buffered
        if not n:
            return
        lo, hi = self.n_frames, self.n_frames + n
        for name, buffer in self.buffers.items():
            ds = self.group[name]
            ds.resize(hi, axis=0)
            ds[lo:hi] = buffer[:n]
        self.n_frames, self.n_buffered = hi, 0


class H5Writer:
    """Append the frames of many systems to a version-3 file (or continue a version-2 one).

    Args:
        path: file to create (mode "w") or continue (mode "a").
        systems: one :class:`SystemInfo` per system of the run (mode "w").
        metadata: run metadata, root attributes (dicts and lists as JSON).
        flush_every: frames collected in memory before they are written and flushed.
        flush_seconds: also flush when this much wall time passed since the last flush.
        cell_series: create the per-frame ``cell``, ``volume`` and ``pressure`` (NPT; mode "w").
    """

    def __init__(self, path: str | os.PathLike, systems: list[SystemInfo] | None, metadata: dict,
                 flush_every: int = 100, flush_seconds: float = 30.0, mode: str = "w", cell_series: bool = False):
        import h5py

        self.path = Path(path)
        self.cell_series = bool(cell_series)
        self.flush_every = int(flush_every)
        self.flush_seconds = float(flush_seconds)
        if mode == "w":
            self.file = h5py.File(self.path, "w")
            self._create(systems, metadata)
        elif mode == "a":
            self.file = h5py.File(self.path, "a")
            check_format(self.file, self.path)
            for key, value in metadata.items():
                self.file.attrs[key] = _attr(value)
        else:
            raise ValueError(f"mode must be 'w' or 'a', got {mode!r}")
        groups = self.file["systems"]
        self.systems = [groups[str(k)] for k in range(len(groups))]
        self.frames = [_Frames(g["frames"], int(g["numbers"].shape[0]), self.flush_every) for g in self.systems]
        self._last_flush = time.monotonic()
        self._flushed_once = any(f.n_frames for f in self.frames)

    def _create(self, systems: list[SystemInfo], metadata: dict) -> None:
        f = self.file
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for key, value in metadata.items():
            f.attrs[key] = _attr(value)
        f.attrs["status"] = "running"
        f.attrs["n_systems"] = len(systems)
        root = f.create_group("systems")
        for k, info in enumerate(systems):
            g = root.create_group(str(k))
            n = len(info.numbers)
            g.create_dataset("numbers", data=info.numbers.astype(np.int32))
            g.create_dataset("masses", data=info.masses).attrs["units"] = "amu"
            g.create_dataset("cell", data=np.asarray(info.cell, dtype=np.float64)).attrs["units"] = "Å"
            g.create_dataset("pbc", data=np.asarray(info.pbc, dtype=bool))
            g.create_dataset("fixed", data=np.asarray(info.fixed, dtype=np.int64))
            for key, value in {"label": info.label, "n_atoms": n, "dof": info.dof, "seed": info.seed,
                               "status": "running", **info.attrs}.items():
                g.attrs[key] = _attr(value)
            frames = g.create_group("frames")
            rows = _chunk_rows(n)
            for name, (per_atom, shape, dtype, units) in (FRAME_FIELDS_V3 if self.cell_series
                                                          else FRAME_FIELDS_V2).items():
                tail = ((n,) if per_atom else ()) + shape
                ds = frames.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                           chunks=(rows if per_atom else 4096, *tail))
                ds.attrs["units"] = units
        f.flush()

    def append(self, system: int, row: dict) -> None:
        """Buffer one frame of ``system`` (a dict with every name of the file's frame fields; arrays copied)."""
        frames = self.frames[system]
        if frames.n_buffered == self.flush_every:
            frames.write()  # a system recorded more often than the others flush: never overflow
        frames.append(row)

    def due(self) -> bool:
        """True when the buffered frames should be written now."""
        return (any(f.n_buffered >= self.flush_every for f in self.frames)
                or not self._flushed_once  # the first frames at once: a readable file from the start
                or time.monotonic() - self._last_flush > self.flush_seconds)

    def flush(self, checkpoint: dict | None = None) -> None:
        """Write buffered frames and the restart checkpoint, then flush the file to disk.

        Args:
            checkpoint: ``step``, ``systems`` [B] (running systems), ``positions``
                and ``momenta`` [N, 3] (ASE units), ``thermostat`` (name -> array) and,
                for NPT, ``cell`` [B, 3, 3] Å, describing the state right after the last
                buffered frame.
        """
        for frames, group in zip(self.frames, self.systems):
            frames.write()
            group.attrs["n_frames"] = frames.n_frames
        if checkpoint is not None:
            self._write_checkpoint(checkpoint)
        self.file.attrs["n_frames"] = sum(f.n_frames for f in self.frames)
        self.file.flush()
        self._last_flush = time.monotonic()
        self._flushed_once = True

    def _write_checkpoint(self, state: dict) -> None:
        # Two slots, written in turn. Dataset bytes reach the file at once while
        # attributes wait in HDF5's metadata cache until a flush, so rewriting
        # one state in place let a SIGKILL leave new positions under an old
        # step. The new state goes into the idle slot, which is flushed before
        # the "slot" pointer moves to it: a kill at any moment leaves one
        # complete, consistent state.
        group = self.file.require_group("checkpoint")
        name = "b" if group.attrs.get("slot") == "a" else "a"
        if name in group:
            del group[name]  # shapes change when systems stop
        slot = group.create_group(name)
        slot.create_dataset("systems", data=np.asarray(state["systems"], dtype=np.int64))
        slot.create_dataset("positions", data=np.asarray(state["positions"], dtype=np.float64)).attrs["units"] = "Å"
        slot.create_dataset("momenta", data=np.asarray(state["momenta"], dtype=np.float64)).attrs["units"] = \
            "ASE (amu·Å/ASE time)"
        if state.get("cell") is not None:
            slot.create_dataset("cell", data=np.asarray(state["cell"], dtype=np.float64)).attrs["units"] = "Å"
        thermostat = slot.create_group("thermostat")
        for key, value in (state.get("thermostat") or {}).items():
            thermostat.create_dataset(key, data=np.asarray(value))
        slot.attrs["step"] = int(state["step"])
        self.file.flush()
        group.attrs["slot"] = name
        group.attrs["step"] = int(state["step"])  # mirror of the current slot's step, for readers

    def set_attrs(self, **attrs) -> None:
        for key, value in attrs.items():
            self.file.attrs[key] = _attr(value)

    def set_system_attrs(self, system: int, **attrs) -> None:
        for key, value in attrs.items():
            self.systems[system].attrs[key] = _attr(value)

    def write_report(self, system: int, report: dict) -> None:
        group = self.systems[system].require_group("report")
        for key, value in report.items():
            group.attrs[key] = _attr(value)

    def close(self, checkpoint: dict | None = None) -> None:
        if self.file.id.valid:
            self.flush(checkpoint)
            self.file.close()

    def truncate_after(self, step: int, systems) -> None:
        """Drop frames of ``systems`` recorded after ``step`` (written past the last checkpoint)."""
        for k in systems:
            frames = self.frames[k]
            steps = frames.group["step"][:]
            keep = int(np.searchsorted(steps, step, side="right"))
            if keep < frames.n_frames:
                for name in _fields(frames.group):
                    frames.group[name].resize(keep, axis=0)
                frames.n_frames = keep
                self.systems[k].attrs["n_frames"] = keep
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


def _attrs(obj) -> dict:
    return {key: _decode(value) for key, value in obj.attrs.items()}


def check_format(f, path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is an HDF5 file but not an ase-mlff MD file (no '{FORMAT}' "
                         "format attribute); such files are written by 'mlff-md run'")
    try:
        version = int(f.attrs.get("format_version", 0))
    except (TypeError, ValueError):
        raise ValueError(f"{path} has a corrupted format_version attribute "
                         f"({f.attrs.get('format_version')!r}); the file was not written by mlff-md") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has MD file format version {version}; this ase-mlff reads up to "
                         f"{FORMAT_VERSION}: upgrade ase-mlff")
    if version < 1:
        raise ValueError(f"{path} has an unknown MD file format version {version}")


def _open(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an HDF5 file of an mlff-md run")
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


def format_version(f) -> int:
    return int(f.attrs.get("format_version", 1))


def n_systems(path: str | os.PathLike) -> int:
    with _open(path) as f:
        return len(f["systems"]) if format_version(f) >= 2 else 1


def _system_group(f, path, system: int):
    """The group holding one system's data (the root of a version-1 file)."""
    try:
        if format_version(f) < 2:
            if system != 0:
                raise ValueError(f"{path} is a version-1 file with one system; system {system} does not exist")
            group = f
        else:
            count = len(f["systems"])
            if not 0 <= system < count:
                raise ValueError(f"{path} holds systems 0..{count - 1}; system {system} does not exist")
            group = f["systems"][str(system)]
        group["frames"], group["numbers"]  # noqa: B018 - fail here, with the message below
        return group
    except KeyError as error:
        raise ValueError(f"{path} is damaged: {error}; it cannot be read as an mlff-md run file") from None


def _complete_frames(group) -> int:
    """Frames of a system that a flush completed.

    A SIGKILL in the middle of a flush can leave some datasets resized past the
    last ``n_frames`` written; the rows below both are whole in every dataset.
    """
    frames = group["frames"]
    lengths = [frames[name].shape[0] for name in frames]
    if "n_frames" in group.attrs:
        lengths.append(int(group.attrs["n_frames"]))
    return min(lengths, default=0)


def _guard(path, read):
    """Run ``read``; damaged contents become one ValueError naming the file."""
    try:
        return read()
    except (KeyError, TypeError, OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged or incomplete ({type(error).__name__}: {error}); "
                         "it cannot be read as an mlff-md run file") from None


def read_metadata(path: str | os.PathLike) -> dict:
    """Root attributes of an MD file, JSON values decoded."""
    with _open(path) as f:
        return _guard(path, lambda: _attrs(f))


def read_system_attrs(path: str | os.PathLike, system: int = 0) -> dict:
    """Attributes of one system (status, label, dof, ...; a version-1 file's root)."""
    with _open(path) as f:
        return _guard(path, lambda: _attrs(_system_group(f, path, system)))


def read_series(path: str | os.PathLike, system: int = 0,
                names=("step", "time", "potential_energy", "kinetic_energy", "total_energy",
                       "temperature")) -> dict:
    """Per-frame series of one system, and ``n_atoms``, ``mass_amu``, ``metadata``, ``system``, ``report``.

    Besides ``names``: ``conserved_energy`` (eV, versions 2 and 3), ``cell`` [F, 3, 3] Å and
    ``volume`` [F] Å³ (every file: an NPT run's stored series, else the fixed cell repeated;
    the volume of a cell that does not span 3-D is 0), and ``pressure`` [F] eV/Å³ (NPT runs only,
    kinetic term included).
    """
    with _open(path) as f:
        def read():
            group = _system_group(f, path, system)
            frames = group["frames"]
            n = _complete_frames(group)
            series = {name: frames[name][:n] for name in names}
            for name in ("conserved_energy", "cell", "volume", "pressure"):
                if name in frames:
                    series[name] = frames[name][:n]
            if "cell" not in series:
                cell = np.asarray(group["cell"][()], dtype=np.float64)
                series["cell"] = np.broadcast_to(cell, (n, 3, 3)).copy()
                series["volume"] = np.full(n, abs(float(np.linalg.det(cell))))
            series["n_atoms"] = int(group["numbers"].shape[0])
            series["mass_amu"] = float(np.sum(group["masses"][()]))
            series["metadata"] = _attrs(f)
            series["system"] = _attrs(group) if group is not f else {}
            series["report"] = _attrs(group["report"]) if "report" in group else {}
            return series
        return _guard(path, read)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The restart state stored at the last flush, in the version-2 form.

    Keys: step, systems [B], positions, momenta [N, 3], thermostat (dict of
    arrays; version 1: its JSON dict), rng_state (version 1 only), metadata,
    checkpoint_cell ([B, 3, 3] Å of an NPT run's checkpoint, else None),
    and per system: numbers, masses, cell (as first stored), pbc, fixed (lists over ``systems``).
    """
    with _open(path) as f:
        def read():
            if "checkpoint" not in f or "slot" not in f["checkpoint"].attrs:
                raise ValueError(f"{path} has no checkpoint (the run wrote no frames before it stopped); "
                                 "start a new run instead of --restart")
            group = f["checkpoint"][f["checkpoint"].attrs["slot"]]
            version = format_version(f)
            _check_layout(f, path, version)
            state = {"step": int(group.attrs["step"]), "positions": group["positions"][:],
                     "momenta": group["momenta"][:], "metadata": _attrs(f), "version": version,
                     "checkpoint_cell": group["cell"][()] if "cell" in group else None}
            if version < 2:
                state["systems"] = np.array([0])
                state["rng_state"] = json.loads(group.attrs["rng_state"])
                state["thermostat"] = json.loads(group.attrs["thermostat"])
                groups = [f]
            else:
                state["systems"] = group["systems"][:]
                state["thermostat"] = {k: v[()] for k, v in group["thermostat"].items()}
                groups = [f["systems"][str(k)] for k in state["systems"]]
            for key in ("numbers", "masses", "cell", "pbc"):
                state[key] = [g[key][()] for g in groups]
            state["fixed"] = [g["fixed"][()] if "fixed" in g else np.zeros(0, dtype=np.int64) for g in groups]
            state["system_attrs"] = [_attrs(g) if g is not f else {} for g in groups]
            return state
        return _guard(path, read)


def _check_layout(f, path, version: int) -> None:
    """Every dataset a continued run appends to or reads is there (a damaged file fails here, untouched)."""
    groups = [f] if version < 2 else [f["systems"][str(k)] for k in range(len(f["systems"]))]
    for g in groups:
        for name in ("numbers", "masses", "cell", "pbc"):
            if name not in g:
                raise KeyError(f"{g.name.rstrip('/')}/{name} is missing")
        for name in FRAME_FIELDS:
            if f"frames/{name}" not in g:
                raise KeyError(f"{g.name.rstrip('/')}/frames/{name} is missing")


def read_frames(path: str | os.PathLike, index=slice(None), system: int = 0) -> list[Atoms]:
    """Frames of one system as Atoms with velocities, energy and forces (a single-point calculator).

    Args:
        index: int or slice over frames (negative values count from the end).
        system: which system of a many-system run.
    """
    with _open(path) as f:
        def read():
            group = _system_group(f, path, system)
            frames = group["frames"]
            n = _complete_frames(group)
            try:
                rows = list(range(n)[index]) if isinstance(index, slice) else [range(n)[index]]
            except IndexError:
                raise ValueError(f"frame {index} does not exist: {path} (system {system}) has {n} frames") from None
            if not rows:
                return [], None
            consts = {key: group[key][()] for key in ("numbers", "cell", "pbc", "masses")}
            consts["fixed"] = group["fixed"][()] if "fixed" in group else np.zeros(0, dtype=np.int64)
            lo, hi = min(rows), max(rows) + 1  # one contiguous read, then pick
            data = {name: frames[name][lo:hi] for name in FRAME_FIELDS}
            if "cell" in frames:  # NPT: each frame's own cell
                data["cell"] = frames["cell"][lo:hi]
            return rows, (lo, consts, data)
        rows, payload = _guard(path, read)
    if not rows:
        return []
    lo, consts, data = payload
    images = []
    for row in rows:
        k = row - lo
        cell = data["cell"][k] if "cell" in data else consts["cell"]
        atoms = Atoms(numbers=consts["numbers"], positions=data["positions"][k], cell=cell, pbc=consts["pbc"])
        atoms.set_masses(consts["masses"])
        atoms.set_velocities(data["velocities"][k] / fs)  # Å/fs -> Å per ASE time unit
        if len(consts["fixed"]):
            from ase.constraints import FixAtoms

            atoms.set_constraint(FixAtoms(indices=consts["fixed"]))
        atoms.info["step"] = int(data["step"][k])
        atoms.info["time_ps"] = float(data["time"][k])
        atoms.calc = SinglePointCalculator(atoms, energy=float(data["potential_energy"][k]),
                                           free_energy=float(data["potential_energy"][k]),
                                           forces=data["forces"][k])
        images.append(atoms)
    return images


def upgrade_version_1(path: str | os.PathLike) -> Path:
    """Rewrite a version-1 run file in the current version (its layout is version 2's: no
    cell series, the cell being fixed) so that ``--restart`` can continue it.

    The original is kept beside it as ``<name>.v1.h5`` (returned); the new file
    replaces it atomically. Frames, metadata and the report are carried over;
    the checkpoint's thermostat state is translated (Bussi's transferred
    energy, the Nosé-Hoover chain's η and p_η). Version-1 runs drew their
    thermostat noise from a numpy generator, which the engine replaces by
    per-system streams: a continued Langevin or Bussi run is statistically
    the same run, not bit for bit the one the old driver would have made.
    """
    import shutil

    import h5py

    from .. import units
    from .noise import system_seeds

    path = Path(path)
    backup = path.with_name(path.stem + ".v1" + path.suffix)
    if backup.exists():
        raise FileExistsError(f"{backup} exists; move it away to let {path} be upgraded for --restart")
    tmp = path.with_name(path.name + ".upgrade.tmp")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        meta = _attrs(src)
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.attrs["format_version"] = FORMAT_VERSION
        dst.attrs["n_systems"] = 1
        g = dst.create_group("systems").create_group("0")
        for name in ("numbers", "masses", "cell", "pbc", "frames"):
            src.copy(src[name], g, name)
        if "report" in src:
            src.copy(src["report"], g, "report")
        frames = g["frames"]
        total = frames["total_energy"]
        ds = frames.create_dataset("conserved_energy", data=total[()], maxshape=(None,), chunks=total.chunks)
        ds.attrs["units"] = "eV"
        n = int(g["numbers"].shape[0])
        g.create_dataset("fixed", data=np.zeros(0, dtype=np.int64))
        T = float(meta.get("temperature_K", 300.0))
        seed = int(meta.get("seed", 0))
        attrs = {"label": "system 0", "n_atoms": n, "dof": float(3 * n), "seed": system_seeds(seed, 1)[0],
                 "status": str(meta.get("status", "running")), "temperature_K": T,
                 "formula": str(meta.get("formula", "")), "n_frames": int(total.shape[0])}
        if "max_radius_A" in meta:
            attrs["max_radius_A"] = float(meta["max_radius_A"])
        for key, value in attrs.items():
            g.attrs[key] = value
        if "checkpoint" in src and "slot" in src["checkpoint"].attrs:
            old = src["checkpoint"][src["checkpoint"].attrs["slot"]]
            state = json.loads(old.attrs["thermostat"])
            kT = units.kB * T
            thermostat = {"kT": [kT], "work": [float(state.get("transferred_energy", 0.0))],
                          "max_temperature": [max(10.0 * T, T + 5000.0)],
                          "max_radius": [float(meta.get("max_radius_A", 1e30))]}
            ensemble = meta.get("ensemble", "nve")
            if ensemble == "langevin":
                thermostat["friction"] = [float(meta.get("friction_per_fs", 0.01)) / units.fs]
            if ensemble in ("bussi", "nose-hoover"):
                taut = float(meta.get("taut_fs", 100.0)) * units.fs
                thermostat["taut"] = [taut]
            if ensemble == "nose-hoover":
                q = np.full((1, 3), kT * taut * taut)
                q[0, 0] *= 3 * n
                eta = np.asarray(state.get("eta", [0.0] * 3), dtype=np.float64).reshape(1, -1)[:, :3]
                p_eta = np.asarray(state.get("p_eta", [0.0] * 3), dtype=np.float64).reshape(1, -1)[:, :3]
                thermostat.update(Q=q, eta=np.pad(eta, ((0, 0), (0, 3 - eta.shape[1]))),
                                  p_eta=np.pad(p_eta, ((0, 0), (0, 3 - p_eta.shape[1]))))
            slot = dst.create_group("checkpoint").create_group("a")
            slot.create_dataset("systems", data=np.array([0], dtype=np.int64))
            slot.create_dataset("positions", data=old["positions"][()])
            slot.create_dataset("momenta", data=old["momenta"][()])
            group = slot.create_group("thermostat")
            for key, value in thermostat.items():
                group.create_dataset(key, data=np.asarray(value, dtype=np.float64))
            slot.attrs["step"] = int(old.attrs["step"])
            dst["checkpoint"].attrs["slot"] = "a"
            dst["checkpoint"].attrs["step"] = int(old.attrs["step"])
    shutil.copy2(path, backup)
    os.replace(tmp, path)
    return backup
