"""NPT step cost against NVT in the batched engine (issue 10: NPT ≤ 1.2× NVT on 1,536-atom water).

    taskset -c 0 .venv/bin/python benchmarks/md_npt.py            # one thread, core 0
    taskset -c 0 .venv/bin/python benchmarks/md_npt.py --quick    # smoke run

examples/water.xyz repeated to 1,536 atoms (periodic), bundled ``water-schnet``,
float32, one thread, 0.5 fs from 300 K. Timed paths, interleaved round by
round (the same background load for all), each cell the median over rounds
of the MD loop's seconds per step (``MDResult.wall_s``: start-up and the
first force call excluded):

* ``run_md`` Bussi NVT (``taut_fs=100``);
* ``run_md`` NPT, isotropic and triclinic stochastic cell rescaling
  (``taup_fs=1000``, the Bussi thermostat of the NVT row);
* the bare model: ``forces.compute`` forward + backward on a prebuilt batch
  and neighbor list, without and with ``stress=True``, which isolates the
  cost of the strain derivative that NPT adds to every step.

Benchmarks are not tests: this prints tables and asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import fmt_ms, fmt_ratio, machine, round_robin, table  # noqa: E402

EXAMPLES = HERE.parent / "examples"


def water(repeat: int = 2):
    from ase.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unrelated ase.io plugin registration warnings
        return read(EXAMPLES / "water.xyz").repeat(repeat)


def engine(atoms, calc, workdir: Path, name: str, **options):
    """A callable running ``steps`` steps of ``run_md`` and returning seconds per step of its loop."""
    from ase_mlff.md import run_md

    def run(steps: int) -> float:
        result = run_md(atoms, calc, timestep_fs=0.5, temperature_K=300.0, taut_fs=100.0, steps=steps, seed=1,
                        output=workdir / name, overwrite=True, traj_interval=0, h5_interval=1000,
                        log_interval=1000, **options)
        if result.status != "completed" or result.steps_run != steps:
            raise RuntimeError(f"{name}: run_md {result.status} after {result.steps_run} steps: {result.message}")
        return result.wall_s / result.steps_run
    return run


def bare(calc, atoms, stress: bool):
    import torch

    from ase_mlff.batch import atoms_to_batch
    from ase_mlff.forces import compute
    from ase_mlff.neighbors import neighbor_list

    batch = atoms_to_batch([atoms], dtype=torch.float64, device=calc.device)
    neighbors = neighbor_list(batch, calc.model.cutoff)
    return lambda: compute(calc.model, batch, neighbors, forces=True, stress=stress)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (a smoke run)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from ase_mlff import MLFFCalculator
    from ase_mlff.bundled import resolve_model_path

    steps, rounds = (5, 2) if args.quick else (20, 7)
    atoms = water()
    calc = MLFFCalculator(resolve_model_path("water-schnet"), dtype="float32", num_threads=1)
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        paths = {"nvt": engine(atoms, calc, workdir, "nvt", ensemble="bussi"),
                 "npt iso": engine(atoms, calc, workdir, "iso", ensemble="npt", taup_fs=1000.0),
                 "npt tri": engine(atoms, calc, workdir, "tri", ensemble="npt", taup_fs=1000.0,
                                   cell_dof="triclinic")}
        for run in paths.values():
            run(2)  # warm-up: allocator, first neighbor list
        times: dict[str, list[float]] = {name: [] for name in paths}
        start = time.perf_counter()
        for _ in range(rounds):
            for name, run in paths.items():
                times[name].append(run(steps))
        loop_s = time.perf_counter() - start
    med = {name: statistics.median(ts) for name, ts in times.items()}
    model = round_robin({"forces": bare(calc, atoms, False), "forces+stress": bare(calc, atoms, True)},
                        min_rounds=rounds)
    print(f"\n1,536-atom water, water-schnet float32, one thread; {steps} steps x {rounds} rounds, "
          f"interleaved ({loop_s:.0f} s)\n")
    rows = [[name, fmt_ms(med[name]), fmt_ratio(med[name] / med["nvt"])] for name in paths]
    rows += [[f"bare {name}", fmt_ms(s), fmt_ratio(s / model["forces"])] for name, s in model.items()]
    print(table(["path", "ms/step (median)", "ratio to NVT (bare: to forces only)"], rows))
    ok = max(med["npt iso"], med["npt tri"]) / med["nvt"] <= 1.2
    print(f"\ntarget NPT <= 1.2x NVT: {'met' if ok else 'NOT met'} "
          f"(isotropic {med['npt iso'] / med['nvt']:.3f}x, triclinic {med['npt tri'] / med['nvt']:.3f}x)")


if __name__ == "__main__":
    main()
