"""Thread settings against step time: why ase_mlff.threads picks what it picks.

    python benchmarks/threads.py            # ethanol (9 atoms) and a 1,536-atom water box
    python benchmarks/threads.py --quick

Times one force call with new positions (an MD step's worth of model work)
through ``MLFFCalculator`` with torch's intra-op pool at 1 thread, 2 threads
and an oversubscribed 8 threads (what torch picks by itself inside a
container that hides the real core count), plus the calculator's own default
(``num_threads=None``: ``MLFF_NUM_THREADS``, else one thread below
``ase_mlff.threads.SMALL_SYSTEM_ATOMS`` atoms and the usable cores above). Settings are
interleaved round by round so that they see the same
background load; the load average is printed with the table, because
oversubscription hurts most when other processes hold the cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ethanol, fmt_ms, fmt_ratio, machine, table, water_box  # noqa: E402

from ase_mlff import MLFFCalculator  # noqa: E402
from ase_mlff.models.schnet import SchNet  # noqa: E402
from ase_mlff.threads import default_threads, set_threads  # noqa: E402

SETTINGS = (1, 2, 8)


def force_call(atoms, species):
    torch.manual_seed(0)
    model = SchNet(species, cutoff=5.0, n_features=64, n_interactions=3, n_rbf=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = MLFFCalculator(model, device="cpu", dtype="float32")
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    start = atoms.positions.copy()

    def call():
        atoms.positions = start + rng.normal(scale=0.01, size=start.shape)
        return atoms.get_forces()

    return call


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repeats")
    args = parser.parse_args(argv)
    small, large = ethanol(), water_box(2)
    cases = [("ethanol, 9 atoms", force_call(small, ["H", "C", "O"]), len(small), 200 if not args.quick else 40),
             ("water pbc, 1,536 atoms", force_call(large, ["H", "O"]), len(large), 5 if not args.quick else 2)]
    settings = list(SETTINGS) + ["default"]
    rounds = 3 if args.quick else 7
    rows = []
    for name, call, n_atoms, n_calls in cases:
        default = default_threads(n_atoms)
        times = {s: [] for s in settings}
        for _ in range(rounds):
            for s in settings:
                set_threads(default if isinstance(s, str) else s)
                call()  # settle the pool
                t0 = time.perf_counter()
                for _ in range(n_calls):
                    call()
                times[s].append((time.perf_counter() - t0) / n_calls)
        median = {s: statistics.median(v) for s, v in times.items()}
        rows.append([name] + [fmt_ms(median[s]) + (f" ({default})" if s == "default" else "")
                              for s in settings]
                    + [fmt_ratio(median[s] / median[1]) for s in settings if s != 1])
        print(f"# done {name}", flush=True)
    set_threads()
    header = ["system"] + [f"{s} thread{'s' if s != 1 else ''}" if not isinstance(s, str)
                           else "calculator default (threads)" for s in settings]
    header += [f"{s if isinstance(s, str) else str(s) + ' threads'} ÷ 1 thread" for s in settings if s != 1]
    print(f"\nOne get_forces call (SchNet 64/3/20, 5 Å, float32), median ms; {machine()}\n")
    print(table(header, rows))


if __name__ == "__main__":
    main()
