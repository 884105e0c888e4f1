"""Calculator speed on ethanol: overhead over the bare model, MD against SchNetPack, batching.

    python benchmarks/calculator.py            # full run (a few minutes on 2 cores)
    python benchmarks/calculator.py --quick    # smoke run
    python benchmarks/calculator.py --profile  # also print where a get_forces call spends its time

All models are untrained SchNets with the same hyperparameters (64 features,
3 interactions, 20 Gaussians, 5 Å cosine cutoff), float32, on the CPU:

(a) overhead: ``MLFFCalculator.get_forces`` with new positions on every call
    (consecutive MD17 frames, as in MD) against ``compute(model, batch,
    neighbors)`` on a batch and neighbor list built once (the bare model
    forward + backward);
(b) ASE ``VelocityVerlet`` (0.5 fs) steps/s with ``MLFFCalculator`` against
    SchNetPack's ``SpkCalculator`` with its matscipy neighbor list, and
    SchNetPack's bare model forward + backward on a prebuilt input;
(c) ``calculate_batch`` of 512 ethanol frames against 512 ``get_forces`` calls
    (atom-evaluations per second).

SchNetPack is optional (see benchmarks/README.md); without it its rows are empty.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, fmt_ms, fmt_ratio, machine, read_frame, round_robin, table  # noqa: E402

from ase_mlff import MLFFCalculator  # noqa: E402
from ase_mlff.batch import atoms_to_batch  # noqa: E402
from ase_mlff.forces import compute  # noqa: E402
from ase_mlff.models.schnet import SchNet  # noqa: E402
from ase_mlff.neighbors import NeighborList  # noqa: E402

CUTOFF, FEATURES, INTERACTIONS, GAUSSIANS = 5.0, 64, 3, 20
TRAJECTORY = DATA / "ethanol_md17_traj_first2000.extxyz.gz"


def our_model() -> SchNet:
    torch.manual_seed(0)
    return SchNet(["H", "C", "O"], cutoff=CUTOFF, n_features=FEATURES,
                  n_interactions=INTERACTIONS, n_rbf=GAUSSIANS)


def schnetpack_calculator(workdir: Path):
    """SpkCalculator around an untrained SchNetPack SchNet of the same size, or None."""
    try:
        import torch.utils.data.dataloader as dataloader

        if not hasattr(dataloader, "T_co"):  # schnetpack 2.1.1 imports a name torch 2.13 renamed
            dataloader.T_co = dataloader._T_co
        import schnetpack as spk
        import schnetpack.transform as trn
        from schnetpack.interfaces import SpkCalculator
    except Exception as error:
        print(f"# schnetpack unavailable ({type(error).__name__}: {error}); install it for these "
              "rows: see benchmarks/README.md (schnetpack 2.1.1 on torch 2.13)")
        return None
    torch.manual_seed(0)
    representation = spk.representation.SchNet(
        n_atom_basis=FEATURES, n_interactions=INTERACTIONS,
        radial_basis=spk.nn.GaussianRBF(n_rbf=GAUSSIANS, cutoff=CUTOFF),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF))
    model = spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=FEATURES, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
        postprocessors=[trn.CastTo64()])
    path = workdir / "spk_schnet.pt"
    torch.save(model, path)
    # SchNetPack unpickles the whole module: allowed for this file we just wrote
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpkCalculator(model_file=str(path), neighbor_list=trn.MatScipyNeighborList(cutoff=CUTOFF),
                             energy_key="energy", force_key="forces", energy_unit="eV",
                             position_unit="Ang", device="cpu", dtype=torch.float32)


def trajectory(n: int):
    frames = read_frame(TRAJECTORY, f":{n}")
    return [f.positions.copy() for f in frames], frames[0]


def overhead(quick: bool, profile: bool):
    positions, atoms = trajectory(200 if quick else 1000)
    rows = []
    results = {}
    for skin in (1.0, 0.0):
        calc = MLFFCalculator(our_model(), device="cpu", dtype="float32", skin=skin)
        atoms = atoms.copy()
        atoms.calc = calc
        batch = atoms_to_batch(atoms, dtype=torch.float32)
        neighbors = NeighborList(CUTOFF)(batch)
        step = [0]

        def get_forces():
            step[0] = (step[0] + 1) % len(positions)
            atoms.positions = positions[step[0]]
            return atoms.get_forces()

        def bare():
            return compute(calc.model, batch, neighbors, forces=True).forces

        times = round_robin({"calc": get_forces, "bare": bare}, min_time=1.0 if quick else 4.0)
        results[skin] = times
        rows.append([f"get_forces (skin {skin:g} Å)", fmt_ms(times["calc"]), fmt_ms(times["bare"]),
                     fmt_ratio(times["calc"] / times["bare"])])
        if profile and skin == 1.0:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(500):
                get_forces()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
            print("\n# cProfile of 500 get_forces calls (skin 1 Å), by own time\n")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    print("\n(a) Calculator overhead on ethanol: median ms per call; target ratio ≤ 1.2\n")
    print(table(["call", "calculator", "bare compute() on prebuilt batch", "ratio"], rows))
    return results


def md(quick: bool, spk_calc):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    _, start = trajectory(1)
    n_steps, rounds = (50, 3) if quick else (400, 5)

    def runner(calc):
        atoms = start.copy()
        atoms.calc = calc
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
        dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
        dyn.run(10)  # warm-up
        return lambda: dyn.run(n_steps)

    runs = {"ours": runner(MLFFCalculator(our_model(), device="cpu", dtype="float32"))}
    if spk_calc is not None:
        runs["SchNetPack SpkCalculator"] = runner(spk_calc)
    times = {k: [] for k in runs}
    for _ in range(rounds):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    steps_per_s = {k: n_steps / statistics.median(v) for k, v in times.items()}

    # bare models: forward + backward on prebuilt inputs
    bare = {}
    atoms = start.copy()
    calc = MLFFCalculator(our_model(), device="cpu", dtype="float32")
    batch = atoms_to_batch(atoms, dtype=torch.float32)
    neighbors = NeighborList(CUTOFF)(batch)
    bare["ours"] = lambda: compute(calc.model, batch, neighbors, forces=True).forces
    if spk_calc is not None:
        inputs = spk_calc.converter(atoms)
        bare["SchNetPack SpkCalculator"] = lambda: spk_calc.model(dict(inputs))["forces"]
    bare_times = round_robin(bare, min_time=1.0 if quick else 3.0)

    rows = []
    for k in runs:
        rows.append([k, f"{steps_per_s[k]:.0f}", f"{1 / bare_times[k]:.0f}",
                     fmt_ratio(steps_per_s["ours"] / steps_per_s[k]) if k != "ours" else "1.00×",
                     fmt_ratio(bare_times[k] / bare_times["ours"]) if k != "ours" else "1.00×"])
    print(f"\n(b) ASE VelocityVerlet on ethanol, 0.5 fs, {n_steps} steps × {rounds} rounds (median); "
          "target: ours ≥ 1.5× SchNetPack's steps/s\n")
    print(table(["calculator", "MD steps/s", "bare model fwd+bwd /s", "ours ÷ this (MD)",
                 "ours ÷ this (bare)"], rows))
    return steps_per_s, bare_times


def batch(quick: bool):
    n = 128 if quick else 512
    frames = read_frame(TRAJECTORY, f":{n}")
    calc = MLFFCalculator(our_model(), device="cpu", dtype="float32")
    single = frames[0].copy()
    single.calc = calc

    def separate():
        for f in frames:
            single.positions = f.positions
            single.get_forces()

    times = round_robin({"batch": lambda: calc.calculate_batch(frames), "separate": separate},
                        min_time=1.0 if quick else 5.0, min_rounds=3)
    n_atoms = sum(len(f) for f in frames)
    rate = {k: n_atoms / t for k, t in times.items()}
    print(f"\n(c) {n} ethanol frames: one calculate_batch call against {n} get_forces calls; "
          "target ≥ 5×\n")
    print(table(["method", "ms for all", "atom-evaluations/s", "speed-up"],
                [[f"calculate_batch({n})", fmt_ms(times["batch"]), f"{rate['batch']:,.0f}",
                  fmt_ratio(rate["batch"] / rate["separate"])],
                 [f"{n} × get_forces", fmt_ms(times["separate"]), f"{rate['separate']:,.0f}", "1.00×"]]))
    return rate


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and repeats")
    parser.add_argument("--profile", action="store_true", help="cProfile of get_forces calls")
    parser.add_argument("--only", choices=["overhead", "md", "batch"], help="run one part")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        if args.only in (None, "overhead"):
            overhead(args.quick, args.profile)
        if args.only in (None, "md"):
            md(args.quick, schnetpack_calculator(Path(workdir)))
        if args.only in (None, "batch"):
            batch(args.quick)
    print(f"\n# {machine()} (threads as set by MLFFCalculator: ase_mlff.threads)")


if __name__ == "__main__":
    main()
