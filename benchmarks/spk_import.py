"""A SchNetPack 2 model file run by ase-mlff's importer against SchNetPack's own ``SpkCalculator``.

    spk-venv/bin/python benchmarks/spk_import.py            # ~4-5 min on 2 busy cores
    spk-venv/bin/python benchmarks/spk_import.py --quick    # smoke run

The script builds one SchNetPack 2.1 ``NeuralNetworkPotential`` with its own
API, as ``spktrain`` would leave it (SchNet: 64 features, 3 interactions,
20 Gaussians, 5 Å cosine cutoff; ``PairwiseDistances``, ``Atomwise`` +
``Forces``; postprocessors ``CastTo64`` and ``AddOffsets`` with atomrefs and a
mean; random weights with non-zero biases: speed does not depend on
training), ``torch.save``-s it to a temp dir, and runs that one file two ways:

* ours: ``MLFFCalculator(path)`` (the file read by ``ase_mlff.spk``, no
  SchNetPack code run);
* SchNetPack 2.1.1: ``SpkCalculator(path, MatScipyNeighborList(5.0))``, its
  fastest neighbor list here.

Both in SchNetPack's default units (kcal/mol, Å) and float32, which is
``SpkCalculator``'s and ``MLFFCalculator``'s default. Before anything is
timed, each section checks in float64 that the two give the same energy and
forces (within 1e-8 eV, eV/Å) and aborts otherwise.

Sections, each in its own process (fresh torch thread pool):

(a) ``import``: ``load_schnetpack(path)`` (read + convert), first call in
    the process and warm median; ``MLFFCalculator(path)`` construction;
    ``SpkCalculator`` construction (``torch.load``) for comparison; the whole
    ``mlff-md import`` command (Python and torch start-up included).
(b) ``ethanol``: examples/ethanol.xyz, one thread, pinned to core 0
    (``taskset -c 0``): ASE ``VelocityVerlet`` steps/s.
(c) ``water``: examples/water.xyz repeated 2×2×2 (1,536 atoms, periodic),
    default threads (``MLFFCalculator``'s choice, which sets torch's pool
    for both calculators): ASE ``VelocityVerlet`` steps/s; then (c′) the
    same on one thread, pinned to core 0, for information (on a shared
    2-core machine two threads can be slower than one, see threads.py).

MD: 0.5 fs from 300 K Maxwell-Boltzmann velocities (seeded). Every round
restarts both calculators from the same positions and momenta, so they
integrate the same stretch of trajectory; rounds alternate between the two
and the tables give the median. SchNetPack must be installed (see
benchmarks/README.md); this script has no meaning without it.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import choose_sections, fmt_ms, fmt_ratio, machine, run_sections, table  # noqa: E402

EXAMPLES = HERE.parent / "examples"
CUTOFF, FEATURES, INTERACTIONS, GAUSSIANS = 5.0, 64, 3, 20
SECTIONS = ("import", "ethanol", "water")
TARGETS = {"ethanol": 1.8, "water": 1.5}  # ours ÷ SpkCalculator, steps/s (issue 9)


def import_schnetpack():
    """schnetpack with the two workarounds for torch 2.13 (see ../shared/PEERS.md)."""
    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):  # schnetpack 2.1.1 imports a name torch 2.13 renamed
        dataloader.T_co = dataloader._T_co
    # SpkCalculator unpickles whole modules: allowed only because this script wrote the file
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        import schnetpack
    except Exception as error:
        raise SystemExit(f"schnetpack unavailable ({type(error).__name__}: {error}); install 2.1.1 "
                         "as in benchmarks/README.md") from None
    return schnetpack


def write_model(path: Path) -> Path:
    """A SchNetPack SchNet ``NeuralNetworkPotential`` saved as ``spktrain`` saves ``best_model``."""
    import torch

    spk = import_schnetpack()
    import schnetpack.transform as trn

    torch.manual_seed(0)
    representation = spk.representation.SchNet(
        n_atom_basis=FEATURES, n_interactions=INTERACTIONS,
        radial_basis=spk.nn.GaussianRBF(n_rbf=GAUSSIANS, cutoff=CUTOFF),
        cutoff_fn=spk.nn.CosineCutoff(CUTOFF))
    offsets = trn.AddOffsets("energy", add_mean=True, add_atomrefs=True)
    # set after construction: the constructor cannot take an atomref tensor (see make_spk_fixtures.py)
    offsets.atomref = -100.0 * torch.rand(100)  # [zmax], kcal/mol, float32 as in trained files
    offsets.mean = torch.tensor([-3.5])
    offsets._atomrefs_initialized = offsets._mean_initialized = True
    model = spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=FEATURES, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
        postprocessors=[trn.CastTo64(), offsets])
    with torch.no_grad():  # initialisation leaves biases at zero; trained models have them
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def ours(path: Path, dtype: str = "float32", num_threads: int | None = None):
    from ase_mlff import MLFFCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "read in kcal/mol and Å": intended, SpkCalculator's defaults too
        return MLFFCalculator(str(path), device="cpu", dtype=dtype, num_threads=num_threads)


def theirs(path: Path, dtype: str = "float32"):
    import torch

    import_schnetpack()
    import schnetpack.transform as trn
    from schnetpack.interfaces import SpkCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SpkCalculator(model_file=str(path), neighbor_list=trn.MatScipyNeighborList(cutoff=CUTOFF),
                             energy_key="energy", force_key="forces", device="cpu",
                             dtype=getattr(torch, dtype))


def structure(name: str):
    from ase.io import read

    if name == "ethanol":
        return read(EXAMPLES / "ethanol.xyz")
    return read(EXAMPLES / "water.xyz").repeat(2)


def check_same_model(path: Path, atoms) -> str:
    """Both calculators on ``atoms`` in float64 (abort beyond 1e-8) and float32 (for information)."""
    results = {}
    for dtype in ("float64", "float32"):
        for key, make in (("ours", ours), ("SpkCalculator", theirs)):
            a = atoms.copy()
            a.calc = make(path, dtype)
            results[key, dtype] = (a.get_potential_energy(), a.get_forces())

    def difference(x, y):  # |ΔE| eV, max |ΔF| eV/Å
        return abs(x[0] - y[0]), float(np.abs(x[1] - y[1]).max())

    de, df = difference(results["ours", "float64"], results["SpkCalculator", "float64"])
    if not (de <= 1e-8 and df <= 1e-8):
        raise SystemExit(f"not the same model: float64 |ΔE| = {de:.2e} eV, max |ΔF| = {df:.2e} eV/Å "
                         "(expected ≤ 1e-8); nothing timed")
    lines = [f"same model: float64 ours vs SpkCalculator |ΔE| {de:.1e} eV, max |ΔF| {df:.1e} eV/Å"]
    for key in ("ours", "SpkCalculator"):  # each float32 against its own float64: the dtype's error
        e32, f32 = difference(results[key, "float32"], results[key, "float64"])
        lines.append(f"{key} float32 vs float64 |ΔE| {e32:.1e} eV, max |ΔF| {f32:.1e} eV/Å")
    return "; ".join(lines)


def section_md(name: str, path: Path, quick: bool) -> None:
    import torch
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    start = structure(name)
    print(f"\n# {name}, {len(start)} atoms: {check_same_model(path, start)}", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ase 3.29 prefers thermalize_momenta; older lack it
        MaxwellBoltzmannDistribution(start, temperature_K=300, rng=np.random.default_rng(0))
    positions, momenta = start.positions.copy(), start.get_momenta()
    if name == "ethanol":  # the parent pinned this process to core 0
        passes = [("b", 1, (50, 3, 20) if quick else (400, 7, 50))]
    else:  # default threads (the target); then one thread on core 0, for information
        passes = [("c", None, (2, 3, 1) if quick else (5, 5, 2)), ("c′", 1, (2, 3, 1) if quick else (5, 5, 2))]
    for label, num_threads, (n_steps, rounds, warm_up) in passes:
        if num_threads == 1:
            if hasattr(os, "sched_setaffinity") and label != "b":
                os.sched_setaffinity(0, {0})  # as taskset -c 0
            torch.set_num_threads(1)
        runs = {}
        for key, calc in (("ours", ours(path, num_threads=num_threads)), ("SpkCalculator", theirs(path))):
            atoms = start.copy()
            atoms.calc = calc
            dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)

            def run(atoms=atoms, dyn=dyn, steps=n_steps):
                atoms.positions = positions  # the same stretch of trajectory for both, every round
                atoms.set_momenta(momenta)
                dyn.run(steps)

            run(steps=warm_up)  # warm-up: thread pool, allocator, neighbor-list caches
            runs[key] = run
        threads = torch.get_num_threads()  # after the warm-up: MLFFCalculator sizes the pool per structure
        times = {key: [] for key in runs}
        for _ in range(rounds):
            for key, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - t0)
        rate = {key: n_steps / statistics.median(ts) for key, ts in times.items()}
        spread = {key: (n_steps / max(ts), n_steps / min(ts)) for key, ts in times.items()}
        rows = [["ours (`MLFFCalculator(path)`)", f"{rate['ours']:.1f}", fmt_ms(1 / rate["ours"]),
                 f"{spread['ours'][0]:.1f}–{spread['ours'][1]:.1f}", "1.00×"],
                ["SchNetPack 2.1.1 `SpkCalculator` + `MatScipyNeighborList`", f"{rate['SpkCalculator']:.1f}",
                 fmt_ms(1 / rate["SpkCalculator"]),
                 f"{spread['SpkCalculator'][0]:.1f}–{spread['SpkCalculator'][1]:.1f}",
                 fmt_ratio(rate["ours"] / rate["SpkCalculator"])]]
        goal = (f"target: ours ≥ {TARGETS[name]}× SpkCalculator" if label != "c′"
                else "for information (the target is at default threads)")
        print(f"\n({label}) {name}, {len(start)} atoms, {threads} thread(s), float32, ASE VelocityVerlet "
              f"0.5 fs, {n_steps} steps × {rounds} rounds (median); {goal}\n")
        print(table(["calculator", "steps/s", "ms/step", "range over rounds", "ours ÷ this"], rows))
        print(f"\n# {machine()}", flush=True)


def section_import(path: Path, workdir: Path, quick: bool) -> None:
    t0 = time.perf_counter()
    from ase_mlff.spk import load_schnetpack

    module_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_schnetpack(path)
    first_s = time.perf_counter() - t0
    repeats = 3 if quick else 7
    loads, calcs, spks = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        load_schnetpack(path)
        loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours(path)
        calcs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs(path)
        spks.append(time.perf_counter() - t0)
    exe = shutil.which("mlff-md", path=str(Path(sys.executable).parent))
    command = ([exe] if exe else [sys.executable, "-m", "ase_mlff.cli"])
    command += ["import", str(path), "-o", str(workdir / "imported.pt"), "--overwrite"]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    cli_s = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"mlff-md import failed ({done.returncode}): {done.stderr[-2000:]}")
    size = path.stat().st_size / 1024
    rows = [["`import ase_mlff.spk` (first import in the process: torch, ase)", fmt_ms(module_s)],
            ["`load_schnetpack(path)`, first call in the process", fmt_ms(first_s)],
            [f"`load_schnetpack(path)`, median of {repeats}", fmt_ms(statistics.median(loads))],
            [f"`MLFFCalculator(path)`, median of {repeats}", fmt_ms(statistics.median(calcs))],
            [f"SchNetPack `SpkCalculator(path, ...)` (`torch.load`), median of {repeats}",
             fmt_ms(statistics.median(spks))],
            ["`mlff-md import` command, whole process (Python, torch start-up)", fmt_ms(cli_s)]]
    print(f"\n(a) Import of a {size:.0f} KiB SchNetPack SchNet file, ms; target < 2 s\n")
    print(table(["step", "ms"], rows))
    print(f"\n# mlff-md import said: {done.stdout.strip()}")
    print(f"# {machine()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and rounds")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: one section in this process
    parser.add_argument("--model", help=argparse.SUPPRESS)  # internal: the file the parent wrote
    args = parser.parse_args()
    if args.section:
        logging.getLogger("schnetpack").setLevel(logging.WARNING)  # "Loading model from ..." per calculator
        path = Path(args.model)
        if args.section == "import":
            section_import(path, path.parent, args.quick)
        else:
            section_md(args.section, path, args.quick)
        return
    chosen = choose_sections(parser, args.only, SECTIONS)
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory(prefix="mlff-spk-bench-") as workdir:
        path = write_model(Path(workdir) / "best_model")
        run_sections(chosen, lambda name: [sys.executable, __file__, "--section", name, "--model", str(path),
                                           *(["--quick"] if args.quick else [])])

if __name__ == "__main__":
    main()
