"""MLFFCalculator in a plain ASE script: energy, forces, a relaxation and a short NVE run.

    python examples/ethanol_calculator.py            # the bundled ethanol PaiNN
    python examples/ethanol_calculator.py my.pt      # any model file

The structure is an rMD17 ethanol geometry (examples/ethanol.xyz).
"""

import sys
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read
from ase.md.velocitydistribution import Stationary, ZeroRotation

try:  # ASE >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ASE
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from ase_mlff import MLFFCalculator

model = sys.argv[1] if len(sys.argv) > 1 else "ethanol-painn"
atoms = read(Path(__file__).with_name("ethanol.xyz"))
atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")

print(f"model {model}")
print(f"energy {atoms.get_potential_energy():.4f} eV")
print(f"largest force {np.linalg.norm(atoms.get_forces(), axis=1).max():.3f} eV/Å")

# forces are -dE/dr: compare one component with a central finite difference
h = 1e-4
moved = atoms.copy()
moved.calc = atoms.calc
moved.positions[2, 0] += h
e_plus = moved.get_potential_energy()
moved.positions[2, 0] -= 2 * h
e_minus = moved.get_potential_energy()
print(f"O force x: autograd {atoms.get_forces()[2, 0]:.5f}, finite difference {-(e_plus - e_minus) / (2 * h):.5f} eV/Å")

BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
print(f"relaxed energy {atoms.get_potential_energy():.4f} eV")

# 1 ps of NVE at 0.5 fs from 300 K velocities; the total energy should stay flat
rng = np.random.default_rng(0)
thermalize_momenta(atoms, temperature_K=300, rng=rng)
Stationary(atoms)
ZeroRotation(atoms)
dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
totals = []
dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=10)
dyn.run(2000)
totals = np.array(totals)
print(f"NVE 1 ps: total energy spread {1e3 * (totals.max() - totals.min()):.2f} meV, "
      f"drift {1e3 * (totals[-1] - totals[0]):.2f} meV, final T {atoms.get_temperature():.0f} K")
