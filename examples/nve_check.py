"""NVE sanity check of a model through MLFFCalculator + ASE's VelocityVerlet.

    python examples/nve_check.py ethanol-painn examples/ethanol.xyz --steps 4000
    python examples/nve_check.py water-schnet examples/water.xyz --steps 2000

Prints the total-energy drift (slope of a linear fit, meV/atom/ps), the largest
excursion of the total energy, and the temperature range, so an exploding or
badly non-conservative model shows at once. Used for the numbers in
potentials/README.md.
"""

import argparse
import time

import numpy as np
from ase import units
from ase.io import read
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.md.verlet import VelocityVerlet

from ase_mlff import MLFFCalculator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("model")
parser.add_argument("structure")
parser.add_argument("--steps", type=int, default=4000)
parser.add_argument("--timestep-fs", type=float, default=0.5)
parser.add_argument("--temperature", type=float, default=300.0)
parser.add_argument("--dtype", default="float32")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: MLFF_NUM_THREADS or the cores available)")
args = parser.parse_args()

atoms = read(args.structure)
atoms.calc = MLFFCalculator(args.model, device="cpu", dtype=args.dtype, num_threads=args.threads)
thermalize_momenta(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
Stationary(atoms)
if not atoms.pbc.any():
    ZeroRotation(atoms)
dyn = VelocityVerlet(atoms, timestep=args.timestep_fs * units.fs)
record = []
dyn.attach(lambda: record.append((atoms.get_total_energy(), atoms.get_temperature())), interval=10)
start = time.perf_counter()
dyn.run(args.steps)
wall = time.perf_counter() - start
total, temperature = np.array(record).T
t_ps = np.arange(len(total)) * 10 * args.timestep_fs / 1000
slope = np.polyfit(t_ps, total, 1)[0] * 1e3 / len(atoms)  # meV/atom/ps
print(f"{args.model} on {args.structure}: {args.steps} steps of {args.timestep_fs} fs ({args.dtype}), "
      f"{len(atoms)} atoms, {wall:.1f} s wall ({1e3 * wall / args.steps:.2f} ms/step)")
print(f"total energy: drift {slope:+.4f} meV/atom/ps, max excursion "
      f"{1e3 * np.abs(total - total[0]).max() / len(atoms):.4f} meV/atom; "
      f"temperature {temperature.min():.0f}-{temperature.max():.0f} K (mean {temperature.mean():.0f} K)")
