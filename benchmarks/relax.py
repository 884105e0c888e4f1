"""Batched FIRE (``ase_mlff.optimize.relax``) against 64 sequential ASE FIRE runs and TorchSim's batched FIRE.

    taskset -c 0 bench-venv/bin/python benchmarks/relax.py            # positions, then positions + cell
    taskset -c 0 bench-venv/bin/python benchmarks/relax.py --quick    # 16 structures, one round

Structures: the first 64 frames of ``../shared/data/mo_mlearn_train.extxyz.gz``
(bcc Mo cells of 2-54 atoms, mostly 53-54), each rattled by 0.05 Å (seeded).
Model: the analytic Lennard-Jones of ase-mlff with ε = 0.2 eV, σ = 2.43 Å
(pair minimum 2^(1/6)σ = 2.73 Å, Mo's bcc nearest-neighbour distance),
cutoff 5.5 Å, in float64 for every tool. No network is trained here: the
bundled potentials cover ethanol and water only, and an untrained SchNet
on Si did not converge in 2,000 steps. LJ is cheap, so the comparison
weighs the optimizers' and engines' own costs more than a network would.

Per mode (``fire``: positions; ``frechet``: positions and cell at p = 0),
the three paths run one after another in every round (interleaved, so they
share the machine's load), each relaxing all structures to ``--fmax``:

* ours: one ``relax(structures, calc, fmax=..., cell=...)`` call;
* ASE: ``FIRE(atoms)`` / ``FIRE(FrechetCellFilter(atoms))`` with
  ``MLFFCalculator`` (default skin list), one structure after another;
* TorchSim 0.3.0: ``torch_sim.optimize`` with ``torch_sim.optimizers.fire`` /
  ``torch_sim.frechet_cell_fire`` (its ASE flavour, ASE's defaults), the same
  LJ behind TorchSim's ``ModelInterface`` (ase-mlff's full neighbor list rebuilt
  on every call, as TorchSim's own model wrappers do; ours and ASE's calculator
  keep skin lists, which hold each pair once for LJ and, as LJ zeroes pairs
  beyond its cutoff, are not pruned to it), the force convergence
  function at ``--fmax`` (cell forces included for ``frechet``), no autobatcher
  (converged structures still leave the batch), convergence checked every
  5 steps (its default ``steps_between_swaps``).

``--compile`` adds ours and ASE with ``MLFFCalculator(compile=True)`` (the model's
evaluation compiled, see ``ase_mlff/compiled.py``), each run once before the timed rounds so
that the compile time stays out of them (printed separately).

Reported: median wall seconds to convergence over rounds, FIRE steps
(ours and ASE per structure; TorchSim's model calls) and the ratios.
Before timing, ours and ASE must agree on every structure's steps and final
energy (1e-8 eV), or the run aborts. Threads: one (``torch.set_num_threads(1)``,
pin the process with ``taskset -c 0``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import DATA, fmt_ratio, machine, optional, table  # noqa: E402

MO = DATA / "mo_mlearn_train.extxyz.gz"
EPSILON, SIGMA, CUTOFF = 0.2, 2.43, 5.5
MAX_STEPS = 1000


def structures(n: int):
    from ase.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = read(MO, f":{n}")
    rng = np.random.default_rng(0)
    for a in frames:
        a.calc = None
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
    return frames


def model():
    from ase_mlff.models import LennardJones

    return LennardJones(["Mo"], epsilon=EPSILON, sigma=SIGMA, cutoff=CUTOFF)


def ours(frames, fmax: float, cell: bool, compile: bool = False):
    from ase_mlff import MLFFCalculator
    from ase_mlff.optimize import relax

    calc = MLFFCalculator(model(), dtype="float64", compile=compile)
    results = relax(frames, calc, fmax=fmax, cell=cell, steps=MAX_STEPS)
    return {"steps": [r.steps for r in results], "energy": [r.energy for r in results],
            "converged": sum(r.converged for r in results)}


def ase_sequential(frames, fmax: float, cell: bool, compile: bool = False):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from ase_mlff import MLFFCalculator

    calc = MLFFCalculator(model(), dtype="float64", compile=compile)
    steps, energy, converged = [], [], 0
    for a in frames:
        a = a.copy()
        a.calc = calc
        optimizer = FIRE(FrechetCellFilter(a) if cell else a, logfile=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's logm warns of a 1e-13 error estimate near F = I
            converged += bool(optimizer.run(fmax=fmax, steps=MAX_STEPS))
        steps.append(optimizer.nsteps)
        energy.append(a.get_potential_energy())
    return {"steps": steps, "energy": energy, "converged": converged}


def torchsim_model(potential, counter: dict, stress: bool):
    """ase-mlff's potential behind TorchSim's ModelInterface: energy, forces, stress (ASE sign, eV/Å³)."""
    import torch
    from torch_sim.models.interface import ModelInterface

    from ase_mlff.batch import Batch
    from ase_mlff.forces import compute
    from ase_mlff.neighbors import NeighborList

    class MLFFModel(ModelInterface):
        def __init__(self):
            super().__init__()
            self.potential = potential
            self.neighbor_list = NeighborList(potential.cutoff)
            self._device, self._dtype = torch.device("cpu"), torch.float64
            self._compute_forces, self._compute_stress = True, stress

        def forward(self, state, **_):
            n_systems = state.cell.shape[0]
            system = state.system_idx
            batch = Batch(positions=state.positions, numbers=state.atomic_numbers.long(),
                          cell=state.row_vector_cell,  # TorchSim stores cell vectors as columns
                          pbc=torch.full((n_systems, 3), bool(state.pbc), device=system.device),
                          system=system, n_atoms=torch.bincount(system, minlength=n_systems))
            out = compute(self.potential, batch, self.neighbor_list(batch), forces=True, stress=stress)
            counter["calls"] += 1
            counter["atoms"] += int(batch.positions.shape[0])
            result = {"energy": out.energy.detach(), "forces": out.forces.detach()}
            if stress:
                result["stress"] = out.stress.detach()
            return result

    return MLFFModel()


def torchsim(ts, frames, fmax: float, cell: bool):
    import torch

    counter = {"calls": 0, "atoms": 0}
    wrapped = torchsim_model(model(), counter, stress=cell)  # FIRE on positions needs no stress
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its max-steps warning, deprecations
        final = ts.optimize(system=[a.copy() for a in frames], model=wrapped,
                            optimizer=ts.frechet_cell_fire if cell else ts.optimizers.fire,
                            convergence_fn=ts.generate_force_convergence_fn(fmax, include_cell_forces=cell),
                            max_steps=MAX_STEPS, autobatcher=False)
    energy = wrapped(final)["energy"] if final.energy is None else final.energy
    return {"calls": counter["calls"], "atom_evaluations": counter["atoms"],
            "energy": energy.to(torch.float64).tolist()}


def check(mine, theirs, label: str) -> None:
    bad = [k for k, (a, b, ea, eb) in enumerate(zip(mine["steps"], theirs["steps"], mine["energy"], theirs["energy"]))
           if a != b or abs(ea - eb) > 1e-8]
    if bad:
        k = bad[0]
        sys.exit(f"{label}: ours and ASE differ on {len(bad)} structures, e.g. {k}: steps {mine['steps'][k]} vs "
                 f"{theirs['steps'][k]}, energy {mine['energy'][k]:.10f} vs {theirs['energy'][k]:.10f} eV; aborting")


def section(mode: str, frames, fmax: float, rounds: int, ts, compiled: bool = False) -> None:
    cell = mode == "frechet"
    paths = {"ours": lambda: ours(frames, fmax, cell), "ASE sequential": lambda: ase_sequential(frames, fmax, cell)}
    if ts is not None:
        paths["TorchSim"] = lambda: torchsim(ts, frames, fmax, cell)
    if compiled:  # built (or loaded from the cache) once before the timed rounds
        paths["ours, compile=True"] = lambda: ours(frames, fmax, cell, compile=True)
        paths["ASE sequential, compile=True"] = lambda: ase_sequential(frames, fmax, cell, compile=True)
        for name in ("ours, compile=True", "ASE sequential, compile=True"):
            t0 = time.perf_counter()
            paths[name]()
            print(f"{name}: first run (compiles) {time.perf_counter() - t0:.1f} s", flush=True)
    times = {name: [] for name in paths}
    outcome = {}
    for _ in range(rounds):
        for name, run in paths.items():
            t0 = time.perf_counter()
            outcome[name] = run()
            times[name].append(time.perf_counter() - t0)
    check(outcome["ours"], outcome["ASE sequential"], mode)
    if compiled:
        check(outcome["ours, compile=True"], outcome["ours"], mode + " (compile=True)")
    median = {name: statistics.median(t) for name, t in times.items()}
    n_atoms = sum(len(a) for a in frames)
    steps = outcome["ours"]["steps"]
    rows = []
    for name in paths:
        o = outcome[name]
        if "steps" in o:
            what = f"{sum(o['steps'])} steps (mean {np.mean(o['steps']):.0f}, max {max(o['steps'])}), " \
                   f"{o['converged']}/{len(frames)} converged"
        else:
            what = f"{o['calls']} model calls, {o['atom_evaluations'] / n_atoms:.0f} atom-evaluations per atom"
        ratio = median[name] / median["ours"]
        rows.append([name, f"{median[name]:.2f}", what, fmt_ratio(ratio) if name != "ours" else "1"])
    print(f"\n### {mode}: {len(frames)} Mo cells ({n_atoms} atoms), fmax {fmax} eV/Å, {rounds} rounds\n")
    print(table(["path", "wall s (median)", "work", "time / ours"], rows))
    if ts is not None:
        de = np.abs(np.array(outcome["TorchSim"]["energy"]) - np.array(outcome["ours"]["energy"])).max()
        print(f"\nmax |E_TorchSim − E_ours| over structures: {de:.2e} eV "
              f"(both stop once below fmax, at different steps)")
    if compiled:
        c_ours, c_ase = median["ours, compile=True"], median["ASE sequential, compile=True"]
        print(f"\ncompiled: ASE sequential / ours {c_ase / c_ours:.2f}×; eager ASE sequential / compiled ours "
              f"{median['ASE sequential'] / c_ours:.2f}×")
    print(f"ours = ASE: every structure the same steps and final energy within 1e-8 eV "
          f"(total {sum(steps)} steps)")


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 structures, one round")
    parser.add_argument("--n", type=int, default=64, help="structures")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--only", default="fire,frechet", help="fire, frechet or both")
    parser.add_argument("--compile", action="store_true",
                        help="also ours and ASE with MLFFCalculator(compile=True), each compiled before timing")
    args = parser.parse_args()
    n, rounds = (16, 1) if args.quick else (args.n, args.rounds)
    torch.set_num_threads(1)
    ts = optional("torch_sim", "bench-venv (torch-sim-atomistic 0.3.0; see benchmarks/README.md)")
    print(f"# {machine()}")
    frames = structures(n)
    for mode in [m.strip() for m in args.only.split(",") if m.strip()]:
        if mode not in ("fire", "frechet"):
            parser.error(f"unknown mode {mode!r}; choose fire and/or frechet")
        section(mode, frames, args.fmax, rounds, ts, args.compile)


if __name__ == "__main__":
    main()
