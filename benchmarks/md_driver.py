"""MD driver overhead: ``run_md`` against the bare ASE integrator loop, same calculator.

    python benchmarks/md_driver.py                 # 1000 steps per run, 3 rounds
    python benchmarks/md_driver.py --steps 2000 --rounds 5 --cli 10000

"bare" is ``VelocityVerlet(atoms, 0.5 fs).run(steps)`` with nothing attached.
"driver" is the whole ``run_md`` call at its default output intervals (HDF5
and .traj every 10 steps, log every 100, HDF5 flushed every 100 frames), from
file creation to the energy-conservation report. Both start from the same
Maxwell-Boltzmann velocities (300 K) and use one calculator object; the two
are run in turn, round by round, so they see the same background load.

System: the first ethanol frame of the benchmark data (or ``ase.build``'s
ethanol) with the bundled potential chosen as ``mlff-md run`` would. Without
shipped potentials a SchNet of the default size with random weights stands
in, in a 12 Å periodic box so its unbound atoms stay together (a random
model does not hold a molecule; the cost per step is what matters here).

A second table repeats the comparison with a harmonic calculator that costs
almost nothing, which exposes the driver's own cost per step in µs (observers,
buffered HDF5, .traj frames); divided by the model's step time it is the
overhead the first table measures, with less noise on a busy machine.

``--cli N`` also times ``mlff-md run ethanol.xyz --steps N`` end to end in a
subprocess (start-up, model loading and report included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402


def structure():
    try:
        from _common import ethanol

        atoms = ethanol()
    except (FileNotFoundError, ImportError):
        from ase.build import molecule

        atoms = molecule("CH3CH2OH")
    from ase import Atoms

    return Atoms(numbers=atoms.numbers, positions=atoms.positions)


def calculator_for(atoms, threads):
    from ase_mlff import MLFFCalculator
    from ase_mlff.md.selection import choose_potential

    try:
        name, path = choose_potential(atoms.numbers)
        return MLFFCalculator(path, num_threads=threads), f"bundled {name}", atoms
    except ValueError:
        import torch

        from ase_mlff.models import SchNet

        torch.manual_seed(0)
        model = SchNet(["H", "C", "O"])
        boxed = atoms.copy()
        boxed.cell, boxed.pbc = [12.0, 12.0, 12.0], True
        boxed.center()
        return MLFFCalculator(model, num_threads=threads), "random SchNet (64 features, 3 blocks), 12 Å box", boxed


class Harmonic:
    """E = ½ Σ |r - r₀|² (eV, Å): an almost free ASE calculator."""

    @staticmethod
    def make(reference):
        from ase.calculators.calculator import Calculator, all_changes

        class _Harmonic(Calculator):
            implemented_properties = ("energy", "forces")

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                d = self.atoms.positions - reference  # [N, 3], Å
                self.results = {"energy": 0.5 * float((d * d).sum()), "forces": -d}

        return _Harmonic()


def compare(atoms, calc, steps, rounds, tmp):
    """Median seconds of the bare loop and of run_md, interleaved round by round."""
    from ase.md.verlet import VelocityVerlet

    from ase_mlff.md import run_md
    from ase_mlff.units import fs

    def bare():
        a = atoms.copy()
        a.calc = calc
        VelocityVerlet(a, timestep=0.5 * fs).run(steps)

    def driver():
        result = run_md(atoms, calc, steps=steps, timestep_fs=0.5, velocities="input", seed=0,
                        output=tmp / "bench", overwrite=True, max_drift=1e9)
        if result.status != "completed":
            raise RuntimeError(result.message)

    bare()  # warm-up: threads, allocator, neighbor-list caches
    times = {"bare": [], "driver": []}
    for _ in range(rounds):
        for name, f in (("bare", bare), ("driver", driver)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rows_for(med, steps):
    return [[name, f"{med[name]:.3f}", f"{1e3 * med[name] / steps:.3f}", f"{steps / med[name]:.0f}",
             f"{med[name] / med['bare']:.3f}"] for name in ("bare", "driver")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cli", type=int, default=0, help="also time 'mlff-md run ethanol.xyz --steps N'")
    args = parser.parse_args()

    from ase_mlff.md.driver import initialize_velocities

    atoms = structure()
    calc, label, atoms = calculator_for(atoms, args.threads)
    initialize_velocities(atoms, 300.0, np.random.default_rng(0))
    tmp = Path(tempfile.mkdtemp(prefix="mlff-md-bench-"))
    header = ["loop", "seconds", "ms/step", "steps/s", "ratio to bare"]

    med = compare(atoms, calc, args.steps, args.rounds, tmp)
    print(f"# {machine()}")
    print(f"# ethanol ({len(atoms)} atoms), {label}, NVE 0.5 fs, {args.steps} steps per run, "
          f"median of {args.rounds} interleaved rounds\n")
    print(table(header, rows_for(med, args.steps)))
    print(f"\ndriver overhead with the model: {100 * (med['driver'] / med['bare'] - 1):+.1f} % "
          "(goal: <= +10 %)")

    cheap_steps = 10 * args.steps
    cheap = compare(atoms, Harmonic.make(atoms.positions.copy()), cheap_steps, args.rounds, tmp)
    per_step = (cheap["driver"] - cheap["bare"]) / cheap_steps
    print(f"\n# the same with a harmonic calculator, {cheap_steps} steps per run\n")
    print(table(header, rows_for(cheap, cheap_steps)))
    print(f"\ndriver's own cost: {1e6 * per_step:.0f} µs/step = "
          f"{100 * per_step / (med['bare'] / args.steps):.1f} % of the model's step "
          f"({1e3 * med['bare'] / args.steps:.2f} ms)")

    if args.cli:
        from ase.io import write

        xyz = tmp / "ethanol.xyz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write(xyz, structure())
        command = [sys.executable, "-m", "ase_mlff.cli", "run", str(xyz), "--steps", str(args.cli),
                   "-o", str(tmp / "cli"), "--overwrite", "-q", "--seed", "0"]
        t0 = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        print(f"\n`mlff-md run ethanol.xyz --steps {args.cli}`: {wall:.1f} s wall (exit {done.returncode})")
        print("\n".join(done.stdout.strip().splitlines()[-8:]) or done.stderr.strip()[-500:])


if __name__ == "__main__":
    main()
