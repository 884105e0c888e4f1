"""QM9 (120,000 molecules) read and ready for training: first read, cached read, ASE.

    taskset -c 0 python benchmarks/qm9_read.py             # 2 rounds
    taskset -c 0 python benchmarks/qm9_read.py --quick     # 1 round, no ASE column

Per round, interleaved so that every path sees the same background load:

* **ASE**: ``ase.io.read`` of the whole file (decompressed to a temporary file
  first, as ``read_dataset`` did before the fast reader) and the labels taken
  from its single-point calculators (``from_atoms``): 120,000 ``Atoms``;
* **first read**: ``read_dataset`` with an empty cache folder: the fast
  extended-XYZ reader into flat arrays, and the cache entry written;
* **cached read**: ``read_dataset`` again: the entry loaded;
* **+ batches**: what training adds before its first step, on the cached
  dataset: the per-element reference fit and the flat frame cache with every
  molecule's neighbor list (5 Å), so that batches are slices.

The goal of the issue: first read <= 60 s, cached <= 5 s, on one core. The
data file is ``$MLFF_BENCH_DATA/qm9_U0_train.extxyz.gz`` (default
``../shared/data``); the cache goes to a temporary folder, never beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, fmt_ratio, machine, table  # noqa: E402

from ase_mlff.training.data import _ase_read, from_atoms, read_dataset  # noqa: E402
from ase_mlff.training.frames import FrameCache  # noqa: E402
from ase_mlff.training.reference import fit_energy_reference  # noqa: E402

QM9 = DATA / "qm9_U0_train.extxyz.gz"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, without the (minute-long) ASE path")
    args = parser.parse_args(argv)
    if not QM9.exists():
        sys.exit(f"{QM9} not found; set MLFF_BENCH_DATA to the folder holding {QM9.name}")
    torch.set_num_threads(1)
    rounds = 1 if args.quick else 2
    times: dict[str, list[float]] = {"ASE": [], "first read": [], "cached read": [], "+ batches": []}
    sizes = {}
    for k in range(rounds):
        if not args.quick:
            t0 = time.perf_counter()
            reference = from_atoms(_ase_read(QM9, None), source=str(QM9))
            times["ASE"].append(time.perf_counter() - t0)
            sizes["ASE"] = len(reference)
            del reference
        with tempfile.TemporaryDirectory(prefix="qm9-cache-") as folder:
            t0 = time.perf_counter()
            first = read_dataset(QM9, cache_dir=folder)
            times["first read"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            data = read_dataset(QM9, cache_dir=folder)
            times["cached read"].append(time.perf_counter() - t0)
            assert data.fingerprint() == first.fingerprint()  # the cache gives the parse back
            sizes["entry MB"] = sum(p.stat().st_size for p in Path(folder).iterdir()) / 1e6
        t0 = time.perf_counter()
        fit_energy_reference(data, data.species)
        frame_cache = FrameCache(data, 5.0)
        times["+ batches"].append(time.perf_counter() - t0)
        sizes["edges"] = int(frame_cache.edges.shape[1])
        tensors = [frame_cache.positions, frame_cache.numbers, frame_cache.edges, frame_cache.cell,
                   frame_cache.pbc, frame_cache.energy, frame_cache.n_atoms]
        sizes["cache MB"] = sum(t.element_size() * t.numel() for t in tensors) / 1e6
        frames = data.atoms
        sizes["data MB"] = sum(a.nbytes for a in (frames.numbers, frames.positions, frames.offsets, frames.cell,
                                                  frames.pbc, data.energy)) / 1e6
        print(f"# round {k + 1}: " + ", ".join(f"{n} {v[-1]:.1f} s" for n, v in times.items() if v), flush=True)
    median = {n: statistics.median(v) for n, v in times.items() if v}
    rows = [[name, f"{seconds:.2f}", fmt_ratio(median["ASE"] / seconds) if "ASE" in median else "–"]
            for name, seconds in median.items()]
    print(f"\nQM9 U0, {len(data):,} molecules, {len(data.atoms.numbers):,} atoms, {sizes['edges']:,} edges "
          f"within 5 Å; cache entry {sizes['entry MB']:.0f} MB; in memory: dataset arrays {sizes['data MB']:.0f} MB, "
          f"frame cache (training tensors) {sizes['cache MB']:.0f} MB; median of {rounds} round(s), seconds; "
          f"{machine()}\n")
    print(table(["path", "seconds", "ASE ÷ this (speed-up)"], rows))


if __name__ == "__main__":
    main()
