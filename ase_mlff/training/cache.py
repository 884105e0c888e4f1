"""A cache of parsed training files: flat arrays in one ``.npz``, rebuilt when the source changes.

Reading QM9 (120,000 molecules, 32 MB of gzipped text) takes about 10 s with
the fast parser and a minute through ASE; the same frames as flat arrays load
in well under a second. The cache lives in a folder of its own
(:func:`default_cache_dir`, never beside the data, which may be read-only or
shared) and holds, per source file, one entry named after the source's path:

    <cache dir>/<file name>-<sha256(path)[:16]>.npz

Each entry records the key it was made for: the source's absolute path, size,
modification time, the sha256 of its first MiB, the labels' keys and the
cache format. An entry whose key differs (the file changed) is *stale*, one
that cannot be read is *corrupt*; both are rebuilt, with one line saying so.
Entries are written to a temporary file and renamed, so a reader never sees
half of one. The cached values are those of the file, before any unit
conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..files import atomic_write

#: bump when the stored arrays change meaning: older entries are then stale
CACHE_FORMAT = 1
#: files smaller than this are read in about a second: caching them would only litter the folder
MIN_CACHED_BYTES = 8 * 2**20
_HEAD_BYTES = 2**20
_ARRAYS = ("numbers", "positions", "offsets", "cell", "pbc", "energy", "info_json", "key_json")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ase-mlff``, else ``~/.cache/ase-mlff``."""
    root = os.environ.get("XDG_CACHE_HOME")
    return Path(root if root else Path.home() / ".cache") / "ase-mlff"


def source_key(path: Path, energy_key: str, forces_key: str) -> dict:
    """What identifies a parse of ``path``: where it is, its size, mtime and head, the label keys."""
    stat = path.stat()
    with open(path, "rb") as handle:
        head = hashlib.sha256(handle.read(_HEAD_BYTES)).hexdigest()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "head_sha256": head, "energy_key": energy_key, "forces_key": forces_key,
            "format": CACHE_FORMAT}


def entry_path(cache_dir: Path, path: Path) -> Path:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{path.name}-{digest}.npz"


def _text(array: np.ndarray) -> str:
    return array.tobytes().decode()


def load(entry: Path, key: dict) -> tuple[dict | None, str]:
    """(arrays, '') from a valid entry for ``key``; (None, why) when missing, stale or corrupt."""
    if not entry.exists():
        return None, "missing"
    try:
        # our own handle: np.load leaves its file open when the archive is damaged
        with open(entry, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            if not set(_ARRAYS) <= set(archive.files):
                return None, f"corrupt (lacks {sorted(set(_ARRAYS) - set(archive.files))})"
            if json.loads(_text(archive["key_json"])) != key:
                return None, "stale (the source file changed)"
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
        return None, f"corrupt ({type(error).__name__}: {' '.join(str(error).split())[:80]})"
    arrays["info"] = json.loads(_text(arrays.pop("info_json")))
    arrays.pop("key_json")
    n_frames, n_atoms = len(arrays["energy"]), len(arrays["numbers"])
    offsets = arrays["offsets"]
    if (len(offsets) != n_frames + 1 or offsets[-1] != n_atoms or len(arrays["info"]) != n_frames
            or arrays["positions"].shape != (n_atoms, 3)
            or ("forces" in arrays and arrays["forces"].shape != (n_atoms, 3))):
        return None, "corrupt (inconsistent array sizes)"
    return arrays, ""


def store(entry: Path, key: dict, arrays: dict) -> Path:
    """Write an entry atomically (temporary file in the cache folder, then rename)."""
    payload = {name: np.asarray(value) for name, value in arrays.items()
               if name != "info" and value is not None}
    payload["numbers"] = payload["numbers"].astype(np.uint8)  # Z <= 118
    payload["info_json"] = np.frombuffer(json.dumps(arrays["info"], default=_json_default).encode(), dtype=np.uint8)
    payload["key_json"] = np.frombuffer(json.dumps(key).encode(), dtype=np.uint8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a name
            np.savez(handle, **payload)

    return atomic_write(entry, write)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()  # numpy scalars (ASE's ints and floats) compare equal as Python numbers
    # arrays would come back as lists: such info is not cached rather than changed
    raise TypeError(f"a {type(value).__name__} value in atoms.info cannot be cached unchanged")


def cached_read(path: Path, read: Callable[[], dict], energy_key: str, forces_key: str,
                cache_dir: str | os.PathLike | None,
                echo: Callable[[str], None] | None = None) -> tuple[dict, str]:
    """``read()``'s arrays for ``path``, from the cache when an entry is valid.

    Args:
        read: parses the file; returns numbers, positions, offsets, cell, pbc, energy,
            forces (or None) and info (list of dicts).
        cache_dir: the cache folder.
        echo: where the one line about a stale, corrupt or unwritable entry goes
            (default: standard error).

    Returns:
        (arrays, how): how is "cached" (read from the cache), "stored" (parsed, entry
        written) or "uncached" (parsed; the entry could not be written).
    """
    echo = echo or (lambda line: print(line, file=sys.stderr))
    key = source_key(path, energy_key, forces_key)
    entry = entry_path(Path(cache_dir), path)
    arrays, why = load(entry, key)
    if arrays is not None:
        return arrays, "cached"
    if why != "missing":
        echo(f"cache {entry} is {why}: rebuilding it from {path}")
    arrays = read()
    try:
        store(entry, key, arrays)
    except OSError as error:
        echo(f"could not write the cache {entry} ({error.strerror or error}); "
             "reading without a cache (choose a writable --cache-dir)")
        return arrays, "uncached"
    except TypeError as error:
        echo(f"not cached: {error}; reading {path} without a cache")
        return arrays, "uncached"
    return arrays, "stored"
