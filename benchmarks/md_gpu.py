"""The batched MD engine on a GPU: one ethanol against 512 replicas, eager and compiled.

    python benchmarks/md_gpu.py                 # needs CUDA; prints a table of atom-steps/s
    python benchmarks/md_gpu.py --replicas 64,512,4096 --steps 200

Target (issue 7): 512 replicas at least 50x the atom-steps/s of the single-system
GPU run. Both run the bundled ``ethanol-painn`` in float32 through ``run_md``
(NVE, 0.5 fs, no .traj, HDF5 every 1,000 steps), rounds interleaved, median
over rounds; the compile time of the compiled runs is reported apart.
Part of ``benchmarks/gpu_check.sh``, the one script a session with a GPU runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,512")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("md_gpu.py needs CUDA (torch.cuda.is_available() is False)")
    from ase.io import read

    from ase_mlff import MLFFCalculator
    from ase_mlff.md import run_md

    atoms = read(HERE.parent / "examples" / "ethanol.xyz")
    sizes = [int(x) for x in args.replicas.split(",")]
    calcs = {"eager": MLFFCalculator("ethanol-painn", device="cuda"),
             "compile": MLFFCalculator("ethanol-painn", device="cuda", compile=True)}
    times = {(mode, n): [] for mode in calcs for n in sizes}
    compile_s = None
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds + 1):  # round 0 warms up (and compiles)
            for (mode, n) in times:
                result = run_md(atoms, calcs[mode], replicas=n, steps=args.steps, seed=rnd, overwrite=True,
                                output=Path(tmp) / "run", traj_interval=0, h5_interval=1000, log_interval=1000)
                if result.compile_s is not None:
                    compile_s = result.compile_s
                if rnd:
                    times[(mode, n)].append(result.wall_s / result.steps_run)
    base = statistics.median(times[("eager", sizes[0])]) / (len(atoms) * sizes[0])
    rows = []
    for (mode, n), t in times.items():
        per_step = statistics.median(t)
        rate = len(atoms) * n / per_step
        rows.append([mode, str(n), f"{1e3 * per_step:.2f}", f"{rate:.4g}", f"{rate * base:.1f}x"])
    print(machine())
    print(table(["model", "replicas", "ms/step", "atom-steps/s", f"vs eager x{sizes[0]}"], rows))
    if compile_s is not None:
        print(f"compile time: {compile_s:.1f} s")


if __name__ == "__main__":
    main()
