"""The batched MD engine (``ase_mlff.md.run_md``) against today's path, the bare model and TorchSim.

    bench-venv/bin/python benchmarks/md_engine.py                  # all sections (see README for the time)
    bench-venv/bin/python benchmarks/md_engine.py --quick          # smoke run
    bench-venv/bin/python benchmarks/md_engine.py --only ethanol,water --replicas 64

Every timed path integrates NVE velocity Verlet at 0.5 fs from 300 K
Maxwell-Boltzmann velocities; within a table the paths run in turn, round by
round, and each cell is the median over rounds of seconds per step. Each
section runs in its own process (fresh torch thread pool) with its own empty
``TORCHINDUCTOR_CACHE_DIR`` and ``MLFF_COMPILE_CACHE`` (unless
``TORCHINDUCTOR_CACHE_DIR`` is set), so compile times are cold; the CLI run of
(a) then finds those caches warm.

(a) ``ethanol``: examples/ethanol.xyz, bundled ``ethanol-painn``, float32, one
    thread, the process pinned to core 0 (``taskset -c 0``):
    bare model forward + backward (``forces.compute`` on a prebuilt batch and
    neighbor list), today's path (ASE ``VelocityVerlet`` + ``MLFFCalculator``),
    the engine eager and with ``compile=True`` (compile time excluded from
    steps/s, shown apart), and the whole command
    ``mlff-md run examples/ethanol.xyz --steps 10000 --compile -q`` in a temp dir.
(b) ``replicas``: 64 and 512 copies of ethanol, default threads: atom-steps/s
    of the engine (eager, compile) against one ethanol in the engine, against
    TorchSim 0.3.0's NVE integrating the same ase-mlff network through its
    ``ModelInterface`` (neighbor list rebuilt on every call, as TorchSim's own
    model wrappers do), and against the bare batched forward + backward (the
    engine's own cost on top of the model). Before timing, the TorchSim
    wrapper is checked against ``MLFFCalculator`` in float64 (energies and
    forces within 1e-10, one velocity-Verlet trajectory against ASE's); a
    mismatch aborts the run.
(c) ``water``: examples/water.xyz repeated to 1,536 and 12,288 atoms
    (periodic), bundled ``water-schnet``, engine eager against ASE
    ``VelocityVerlet`` + ``MLFFCalculator``, default threads.

Engine columns stay empty, with a note, while ``run_md`` lacks the batched
API (``replicas=``, ``MLFFCalculator(compile=...)``). TorchSim is optional
(see benchmarks/README.md); without it its columns are empty.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import choose_sections, fmt_ms, fmt_ratio, machine, optional, run_sections, table  # noqa: E402

EXAMPLES = HERE.parent / "examples"
SECTIONS = ("ethanol", "replicas", "water")
TIMESTEP_FS, TEMPERATURE_K = 0.5, 300.0

# steps per timed run and rounds, (normal, quick); sized for a few minutes per
# section on 2 shared cores
PLAN = {
    "ethanol": {"steps": (300, 60), "rounds": (5, 2), "cli_steps": (10_000, 2_000)},
    "replicas": {"steps": {64: (20, 4), 512: (8, 1)}, "single_steps": (100, 30), "rounds": (3, 2)},
    "water": {"steps": {2: (8, 2), 4: (4, 1)}, "rounds": (3, 1)},
}


# -- shared pieces ---------------------------------------------------------------
def read_example(name: str):
    from ase.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unrelated ase.io plugin registration warnings
        return read(EXAMPLES / name)


def with_velocities(atoms, seed: int):
    """A copy with Maxwell-Boltzmann momenta at 300 K, zero total momentum."""
    from ase import units

    atoms = atoms.copy()
    masses = atoms.get_masses()[:, None]  # [N, 1] amu
    momenta = np.random.default_rng(seed).normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * TEMPERATURE_K)
    atoms.set_momenta(momenta - masses * momenta.sum(0) / masses.sum())
    return atoms


def engine_api() -> tuple[bool, bool, str]:
    """(batched run_md present, MLFFCalculator(compile=...) present, note for empty columns)."""
    from ase_mlff import MLFFCalculator

    try:
        from ase_mlff.md import run_md
    except Exception as error:  # the engine is being written in the same tree
        return False, False, ("engine columns empty: ase_mlff.md.run_md does not import "
                              f"({type(error).__name__}: {error})")
    batched = "replicas" in inspect.signature(run_md).parameters
    # ASE's Calculator swallows unknown keywords into its parameters, so a
    # missing compile option would not raise: look at the signature
    compiles = "compile" in inspect.signature(MLFFCalculator.__init__).parameters
    note = ""
    if not batched:
        note = "engine columns empty: ase_mlff.md.run_md has no replicas= yet (the batched engine has not landed)"
    elif not compiles:
        note = "compile columns empty: MLFFCalculator has no compile= option yet"
    return batched, compiles, note


def calculator(model: str, threads: int | None, compile: bool = False):
    from ase_mlff import MLFFCalculator

    kwargs = {"compile": True} if compile else {}
    return MLFFCalculator(model, device="cpu", dtype="float32", num_threads=threads, **kwargs)


class Engine:
    """One ``run_md`` configuration; each call runs ``steps`` steps and returns s/step of the MD loop."""

    def __init__(self, atoms, calc, replicas: int, workdir: Path, name: str):
        self.atoms, self.calc, self.replicas = atoms, calc, replicas
        self.output = str(workdir / name)
        self.calls: list[tuple[int, float, float]] = []  # (steps, whole call s, result.wall_s)
        self.compile_s: float | None = None  # as run_md reports it, first call
        self.threads = None

    def __call__(self, steps: int) -> float:
        import torch

        from ase_mlff.md import run_md

        t0 = time.perf_counter()
        result = run_md(self.atoms, self.calc, ensemble="nve", timestep_fs=TIMESTEP_FS,
                        temperature_K=TEMPERATURE_K, steps=steps, seed=1, output=self.output,
                        overwrite=True, traj_interval=0, h5_interval=1000, log_interval=1000,
                        replicas=self.replicas)
        whole = time.perf_counter() - t0
        self.threads = torch.get_num_threads()
        if result.status != "completed" or result.steps_run != steps:
            raise RuntimeError(f"run_md {result.status} after {result.steps_run} steps: {result.message}")
        if not self.calls:
            self.compile_s = getattr(result, "compile_s", None)
        self.calls.append((steps, whole, result.wall_s))
        return result.wall_s / result.steps_run

    def first_call_excess_s(self, seconds_per_step: float) -> float:
        """What the first (warm-up) call took beyond a steady call of its length: compilation, mostly."""
        steps, first, _ = self.calls[0]
        outside = statistics.median(whole - loop for _, whole, loop in self.calls[1:]) if len(self.calls) > 1 else 0
        return first - outside - steps * seconds_per_step

    def compile_note(self, seconds_per_step: float, built_s: float, before_s: float = 0.0) -> str:
        """``before_s``: compile seconds the same calculator had already reported (a shared evaluator)."""
        reported = "–" if self.compile_s is None else f"{self.compile_s - before_s:.1f} s"
        return (f"run_md's compile_s {reported}; first call beyond a steady one "
                f"{self.first_call_excess_s(seconds_per_step):.1f} s (+ {built_s:.1f} s building the calculator)")


Timed = Callable[[int], float]  # runs that many steps, returns seconds per step


def interleave(paths: dict[str, Timed], steps: dict[str, int], rounds: int,
               warmup_steps: int | None = None) -> dict[str, float]:
    """Median over rounds of each path's seconds per step.

    One warm-up call each first (allocator, caches, compilation; ``warmup_steps``
    steps, default the path's own, 0 for none); then the paths run in turn so
    that they see the same background load.
    """
    for name, f in paths.items():
        n = steps[name] if warmup_steps is None else warmup_steps
        if n:
            f(n)
    per_step: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, f in paths.items():
            per_step[name].append(f(steps[name]))
    return {name: statistics.median(v) for name, v in per_step.items()}


def timed_block(step: Callable[[], object]) -> Timed:
    def run(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - t0) / steps

    return run


def ase_verlet(atoms, calc) -> Timed:
    """Today's path: ASE VelocityVerlet with MLFFCalculator, s/step of ``dyn.run``."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    def run(steps: int) -> float:
        a = atoms.copy()
        a.calc = calc
        a.get_forces()  # the start's forces, outside the clock (run_md's wall_s excludes them too)
        dyn = VelocityVerlet(a, timestep=TIMESTEP_FS * units.fs)
        t0 = time.perf_counter()
        dyn.run(steps)
        return (time.perf_counter() - t0) / steps

    return run


def with_threads(threads: int, f: Timed) -> Timed:
    """Run ``f`` at a fixed torch thread count (the engine and calculators set their own)."""
    import torch

    def run(steps: int) -> float:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return f(steps)

    return run


def bare_forward_backward(calc, structures) -> Callable[[], object]:
    """One model forward + backward on a batch and neighbor list built once."""
    from ase_mlff.batch import atoms_to_batch
    from ase_mlff.forces import compute
    from ase_mlff.neighbors import NeighborList

    batch = atoms_to_batch(structures)  # positions in the calculator's own (default) dtype
    neighbors = NeighborList(calc.model.cutoff)(batch)
    return lambda: compute(calc.model, batch, neighbors, forces=True).forces


def steps_per_s(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1 / seconds:,.0f}"


def rate(seconds: float | None, n_atoms: int) -> str:
    return "–" if seconds is None else f"{n_atoms / seconds:,.0f}"


def met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "no")


# -- (a) ethanol, one thread ---------------------------------------------------------
def section_ethanol(quick: bool, workdir: Path) -> None:
    q = int(quick)
    steps, rounds = PLAN["ethanol"]["steps"][q], PLAN["ethanol"]["rounds"][q]
    batched, compiles, note = engine_api()
    atoms = read_example("ethanol.xyz")
    calc = calculator("ethanol-painn", threads=1)
    paths = {"bare": timed_block(bare_forward_backward(calc, atoms)),
             "ase": ase_verlet(with_velocities(atoms, 0), calc)}
    compiled, built_s = None, 0.0
    if batched:
        paths["eager"] = Engine(atoms, calculator("ethanol-painn", threads=1), 1, workdir, "eager")
        if compiles:
            t0 = time.perf_counter()
            compiled = paths["compile"] = Engine(atoms, calculator("ethanol-painn", threads=1, compile=True), 1,
                                                 workdir, "compiled")
            built_s = time.perf_counter() - t0
    med = interleave(paths, dict.fromkeys(paths, steps), rounds)
    bare, today = med["bare"], med["ase"]
    eager, comp = med.get("eager"), med.get("compile")

    def row(label, s, target, ok):
        return [label, fmt_ms(s), steps_per_s(s),
                fmt_ratio(today / s) if s else "–", fmt_ratio(s / bare) if s else "–", target, met(ok)]

    rows = [
        row("bare model forward + backward (prebuilt batch, neighbor list)", bare, "", None),
        row("today's path: ASE VelocityVerlet + MLFFCalculator", today, "", None),
        row("engine, eager", eager, "≥ 1.00× today, ≤ 1.05× bare",
            None if eager is None else (eager <= today and eager <= 1.05 * bare)),
        row("engine, compile=True (compile time excluded)", comp, "≥ 2.50× today",
            None if comp is None else today / comp >= 2.5),
    ]
    print(f"\n(a) ethanol (9 atoms), ethanol-painn, float32, 1 thread on core 0; {steps} steps × "
          f"{rounds} rounds, median\n")
    print(table(["path", "ms/step", "steps/s", "speed-up over today", "time ÷ bare", "target", "met"], rows))
    if compiled is not None:
        print(f"\ncompile time: {compiled.compile_note(comp, built_s)}")
    if note:
        print(f"\n# {note}")
    cli(workdir, PLAN["ethanol"]["cli_steps"][q], compile_flag=True, today_step=today)


def cli(workdir: Path, steps: int, compile_flag: bool, today_step: float) -> None:
    """``mlff-md run examples/ethanol.xyz --steps N --compile -q``, end to end, in a temp dir."""
    exe = shutil.which("mlff-md", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "ase_mlff.cli"]
    command += ["run", str(EXAMPLES / "ethanol.xyz"), "--steps", str(steps), "-q"]
    if compile_flag:
        command.append("--compile")
    rundir = Path(tempfile.mkdtemp(dir=workdir, prefix="cli-"))
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=rundir, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    shown = " ".join(["mlff-md"] + command[command.index("run"):]).replace(str(EXAMPLES.parent) + "/", "")
    if done.returncode == 2 and compile_flag and "--compile" in done.stderr:
        print(f"\n# `{shown}`: no --compile option yet; timing it without")
        return cli(workdir, steps, compile_flag=False, today_step=today_step)
    warm = " (torch.compile cache warm from the run above)" if compile_flag else ""
    print(f"\n`{shown}`: {wall:.1f} s wall{warm}, exit {done.returncode}; today's path would "
          f"spend {steps * today_step:.1f} s in its {steps} steps alone")
    tail = (done.stdout.strip() or done.stderr.strip()).splitlines()[-6:]
    if tail:
        print("\n".join("    " + line for line in tail))


# -- (b) replicas and TorchSim ---------------------------------------------------------
def torchsim_model(potential, dtype):
    """The ase-mlff network behind TorchSim's ModelInterface (neighbor list rebuilt per call)."""
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
            self._device, self._dtype = torch.device("cpu"), dtype
            self._compute_forces, self._compute_stress = True, False

        def forward(self, state, **_):
            n_systems = state.cell.shape[0]
            system = state.system_idx
            batch = Batch(
                positions=state.positions,
                numbers=state.atomic_numbers.long(),  # TorchSim keeps int32
                cell=state.row_vector_cell,  # TorchSim stores cell vectors as columns
                pbc=torch.full((n_systems, 3), bool(state.pbc), device=system.device),
                system=system,
                n_atoms=torch.bincount(system, minlength=n_systems),
            )
            out = compute(self.potential, batch, self.neighbor_list(batch), forces=True)
            return {"energy": out.energy.detach().to(state.positions.dtype), "forces": out.forces.detach()}

    return MLFFModel()


def torchsim_nve(ts, model, structures, dtype, seed: int):
    """(initial MDState, update function) of TorchSim's NVE, timestep and kT in its metal units."""
    import torch

    metal = ts.units.MetalUnits
    state = ts.io.atoms_to_state(structures, torch.device("cpu"), dtype)
    kT = torch.tensor(TEMPERATURE_K * metal.temperature, dtype=dtype)
    dt = torch.tensor(TIMESTEP_FS * 1e-3 * metal.time, dtype=dtype)  # integrate() takes ps
    init, update = ts.nve(model=model, dt=dt, kT=kT, seed=seed)
    return init(state), update


def check_torchsim(ts) -> None:
    """Abort unless the wrapper gives MLFFCalculator's energies and forces and ASE's trajectory."""
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from ase_mlff import MLFFCalculator

    rng = np.random.default_rng(0)
    ethanol, water = read_example("ethanol.xyz"), read_example("water.xyz")
    rattled = []
    for _ in range(3):
        a = ethanol.copy()
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        rattled.append(a)
    failures = []
    for name, structures in (("ethanol-painn", [ethanol]), ("ethanol-painn", rattled),
                             ("water-schnet", [water])):
        calc = MLFFCalculator(name, device="cpu", dtype="float64", num_threads=None)
        model = torchsim_model(calc.model, torch.float64)
        out = model(ts.io.atoms_to_state(structures, torch.device("cpu"), torch.float64))
        forces = out["forces"].numpy()
        start = 0
        for k, a in enumerate(structures):
            a = a.copy()
            a.calc = calc
            de = abs(float(out["energy"][k]) - a.get_potential_energy())
            df = np.abs(forces[start:start + len(a)] - a.get_forces()).max()
            start += len(a)
            if de > 1e-10 or df > 1e-10:
                failures.append(f"{name} structure {k}/{len(structures)}: |ΔE| {de:.2e} eV, "
                                f"max |ΔF| {df:.2e} eV/Å")
    # the same integrator and timestep: 20 velocity-Verlet steps from the same momenta, float64
    calc = MLFFCalculator("ethanol-painn", device="cpu", dtype="float64", num_threads=None)
    model = torchsim_model(calc.model, torch.float64)
    state, update = torchsim_nve(ts, model, [ethanol], torch.float64, seed=0)
    a = ethanol.copy()
    a.set_momenta(state.momenta.numpy())
    a.calc = calc
    VelocityVerlet(a, timestep=TIMESTEP_FS * units.fs).run(20)
    for _ in range(20):
        state = update(state)
    dr = np.abs(state.positions.numpy() - a.positions).max()
    if dr > 1e-8:  # both float64 Verlet: only rounding separates them over 20 steps
        failures.append(f"positions after 20 NVE steps differ from ASE VelocityVerlet by {dr:.2e} Å")
    # and the high-level entry point accepts the wrapper
    final = ts.integrate(system=[ethanol], model=model, integrator=ts.nve, n_steps=3,
                         temperature=TEMPERATURE_K, timestep=TIMESTEP_FS * 1e-3)
    if not torch.isfinite(final.positions).all():
        failures.append("torch_sim.integrate(..., integrator=torch_sim.nve) gave non-finite positions")
    if failures:
        sys.exit("TorchSim wrapper does not match ase-mlff; aborting:\n  " + "\n  ".join(failures))
    print("# TorchSim wrapper checked (float64): energies and forces equal MLFFCalculator's within "
          f"1e-10 (ethanol, 3 rattled ethanols in one batch, periodic water 192); 20 NVE steps "
          f"match ASE VelocityVerlet to {dr:.1e} Å")


def section_replicas(quick: bool, workdir: Path, sizes: list[int]) -> None:
    import torch

    from ase_mlff.threads import default_threads

    q = int(quick)
    rounds = PLAN["replicas"]["rounds"][q]
    batched, compiles, note = engine_api()
    ts = optional("torch_sim", "pip install -c constraints.txt torch-sim-atomistic==0.3.0 (benchmarks/README.md)")
    if ts is not None:
        check_torchsim(ts)
    ethanol = read_example("ethanol.xyz")
    single_steps = PLAN["replicas"]["single_steps"][q]
    rows, overhead_rows, compile_notes, plan_notes = [], [], [], []
    # one calculator each for one ethanol and for compile=True, shared by the batch sizes: the
    # second size shows whether the compiled model (dynamic shapes) is reused or compiled again
    one_calc = calculator("ethanol-painn", threads=None)
    compile_calc, built_s, compiled_before = None, 0.0, 0.0
    if batched and compiles:
        t0 = time.perf_counter()
        compile_calc = calculator("ethanol-painn", threads=None, compile=True)
        built_s = time.perf_counter() - t0
    for n in sizes:
        steps = PLAN["replicas"]["steps"].get(n, (5, 2))[q]
        plan_notes.append(f"{n}: {steps}")
        n_atoms = n * len(ethanol)
        threads = default_threads(n_atoms)
        calc = calculator("ethanol-painn", threads=None)
        copies = [with_velocities(ethanol, seed) for seed in range(n)]
        paths = {"bare": with_threads(threads, timed_block(bare_forward_backward(calc, copies)))}
        engines = {}
        if batched:
            engines["single"] = Engine(ethanol, one_calc, 1, workdir, f"one{n}")
            engines["eager"] = Engine(ethanol, calc, n, workdir, f"eager{n}")
            if compile_calc is not None:
                engines["compile"] = Engine(ethanol, compile_calc, n, workdir, f"compile{n}")
            paths.update(engines)
        if ts is not None:
            state, update = torchsim_nve(ts, torchsim_model(calc.model, torch.float32), copies,
                                         torch.float32, seed=0)

            def torchsim(steps: int, state=state, update=update) -> float:
                s = state.clone()  # the same start every round
                t0 = time.perf_counter()
                for _ in range(steps):
                    s = update(s)
                return (time.perf_counter() - t0) / steps

            paths["torchsim"] = with_threads(threads, torchsim)
        n_steps = dict.fromkeys(paths, steps)
        n_steps["single"] = single_steps
        # warm-up: 1 step each (the compile path compiles on its first call, whatever its length)
        med = interleave(paths, n_steps, rounds, warmup_steps=1)
        one = med.get("single")
        one_rate = len(ethanol) / one if one else None
        torchsim_rate = n_atoms / med["torchsim"] if "torchsim" in med else None

        def row(label, key, atoms_per_step, used_threads):
            s = med.get(key)
            r = atoms_per_step / s if s else None
            return [f"{n} × ethanol ({n_atoms:,} atoms)", label, str(used_threads), fmt_ms(s),
                    "–" if r is None else f"{r:,.0f}",
                    fmt_ratio(r / one_rate) if r and one_rate else "–",
                    fmt_ratio(r / torchsim_rate) if r and torchsim_rate else "–"]

        def used(key):
            return engines[key].threads if key in engines else "–"

        rows += [row("engine, one ethanol, eager", "single", len(ethanol), used("single")),
                 row("engine, eager", "eager", n_atoms, used("eager")),
                 row("engine, compile=True", "compile", n_atoms, used("compile")),
                 row("TorchSim 0.3.0 nve, same network", "torchsim", n_atoms, threads if ts else "–"),
                 row("bare model forward + backward (prebuilt)", "bare", n_atoms, threads)]
        if "eager" in med:
            cost = med["eager"] / med["bare"] - 1
            overhead_rows.append([f"{n} × ethanol", fmt_ms(med["bare"]), fmt_ms(med["eager"]),
                                  f"{100 * cost:+.1f} %", met(cost <= 0.10)])
        if "compile" in engines:
            engine = engines["compile"]
            compile_notes.append(f"{n} replicas: {engine.compile_note(med['compile'], built_s, compiled_before)}")
            built_s, compiled_before = 0.0, engine.compile_s or 0.0  # the next size shares the calculator
    print(f"\n(b) replicas of ethanol, ethanol-painn float32, default threads; median of {rounds} rounds "
          f"(steps per run: {', '.join(plan_notes)}; one ethanol {single_steps})\n")
    print(table(["batch", "path", "threads", "ms/step", "atom-steps/s", "÷ one ethanol in the engine",
                 "÷ TorchSim"], rows))
    if overhead_rows:
        print("\nthe engine's own cost on top of the model's forward + backward (target ≤ +10 %)\n")
        print(table(["batch", "bare fwd+bwd ms", "engine eager ms/step", "engine cost", "met"], overhead_rows))
    for line in compile_notes:
        print(f"\ncompile time, excluded above: {line}")
    if ts is not None:
        print("\n# TorchSim wrapper: neighbor list rebuilt on every call (no skin, as TorchSim's own model "
              "wrappers do); its state float32; the engine keeps per-system skin lists")
    if note:
        print(f"\n# {note}")


# -- (c) periodic water ------------------------------------------------------------------
def section_water(quick: bool, workdir: Path) -> None:
    q = int(quick)
    rounds = PLAN["water"]["rounds"][q]
    batched, _, note = engine_api()
    water = read_example("water.xyz")
    rows = []
    for repeat, plan in PLAN["water"]["steps"].items():
        steps = plan[q]
        atoms = water.repeat(repeat)
        calc = calculator("water-schnet", threads=None)
        paths = {"ase": ase_verlet(with_velocities(atoms, 0), calc)}
        engine = None
        if batched:
            engine = paths["eager"] = Engine(atoms, calculator("water-schnet", threads=None), 1, workdir,
                                             f"water{repeat}")
        # at ~1 s and more per step, one step is warm-up enough
        med = interleave(paths, dict.fromkeys(paths, steps), rounds, warmup_steps=1)
        n = len(atoms)
        eager = med.get("eager")
        rows.append([f"water pbc {n:,}", str(steps), fmt_ms(med["ase"]), rate(med["ase"], n),
                     str(calc.num_threads), fmt_ms(eager), rate(eager, n),
                     str(engine.threads) if engine else "–",
                     fmt_ratio(med["ase"] / eager) if eager else "–"])
    print(f"\n(c) periodic water, water-schnet float32, default threads; median of {rounds} rounds\n")
    print(table(["system", "steps/run", "ASE VV ms/step", "ASE atom-steps/s", "threads",
                 "engine ms/step", "engine atom-steps/s", "threads", "engine speed-up"], rows))
    if note:
        print(f"\n# {note}")


# -- driver --------------------------------------------------------------------------------
def run_section(name: str, quick: bool, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="mlff-md-engine-") as workdir:
        if name == "ethanol":
            section_ethanol(quick, Path(workdir))
        elif name == "replicas":
            section_replicas(quick, Path(workdir), sizes)
        else:
            section_water(quick, Path(workdir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and rounds")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--replicas", default="64,512", help="batch sizes for section (b)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    args = parser.parse_args()
    sizes = [int(s) for s in args.replicas.split(",") if s]
    if args.section:
        run_section(args.section, args.quick, sizes)
        return
    chosen = choose_sections(parser, args.only, SECTIONS)
    print(f"# {machine()}")
    cache = None
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        cache = tempfile.TemporaryDirectory(prefix="mlff-md-engine-inductor-")
    def env_for(name):
        env = dict(os.environ)
        if cache is not None:  # a cold compile in each section; the CLI run then finds the caches warm
            env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache.name) / name)
            env.setdefault("MLFF_COMPILE_CACHE", str(Path(cache.name) / name / "aoti"))  # ase_mlff.aot packages
        return env

    run_sections(chosen, lambda name: [sys.executable, __file__, "--section", name, "--replicas", args.replicas,
                                       *(["--quick"] if args.quick else [])], env_for)

if __name__ == "__main__":
    main()
