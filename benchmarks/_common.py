"""Shared helpers for the benchmark scripts: data, timing, optional peers, tables.

Benchmarks are not tests (see the house style): they print markdown tables of
absolute medians and of ratios against peers measured in the same run, and
assert nothing about speed.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

DATA = Path(os.environ.get("MLFF_BENCH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
ETHANOL = DATA / "ethanol_rmd17_train.extxyz.gz"
WATER = DATA / "water_deepmd_train.extxyz.gz"


def read_frame(path: Path, index: int = 0):
    from ase.io import read

    if not path.exists():
        raise FileNotFoundError(
            f"benchmark data {path} not found; set MLFF_BENCH_DATA to the folder holding "
            f"{ETHANOL.name} and {WATER.name}"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unrelated ase.io plugin registration warnings
        return read(path, index)


def ethanol():
    return read_frame(ETHANOL, 0)


def water_box(repeat: int):
    """The 192-atom DeePMD water frame repeated ``repeat`` times per axis (periodic)."""
    return read_frame(WATER, 0).repeat(repeat)


def without_cell(atoms):
    """The same atoms as an open cluster: no cell, no periodicity."""
    from ase import Atoms

    return Atoms(numbers=atoms.numbers, positions=atoms.positions)


def optional(module: str, install: str):
    """Import a peer lazily; None (and a note on stderr) when it is missing."""
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or a peer broken on this torch
        print(f"# {module} unavailable ({type(error).__name__}: {error}); "
              f"install it for this column: {install}")
        return None


def round_robin(functions: dict[str, Callable[[], object]], min_time: float = 1.0,
                min_rounds: int = 5, max_rounds: int = 200) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn.

    Interleaving the tools round by round exposes them to the same background
    load, which keeps their ratios meaningful on a busy machine.
    """
    for f in functions.values():
        f()  # warm-up: caches, lazy initialisation, allocator
    times: dict[str, list[float]] = {name: [] for name in functions}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < min_time):
        for name, f in functions.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
            f"{cores} cores{load}, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}")


def run_sections(names, command_for: Callable[[str], list], env_for: Callable[[str], dict | None] = lambda n: None,
                 pinned: tuple = ("ethanol",)) -> None:
    """Run each section in its own process (a fresh torch thread pool), the one-thread ones
    pinned to core 0 with ``taskset``; stop at the first that fails."""
    import shutil
    import subprocess
    import sys

    for name in names:
        command = command_for(name)
        if name in pinned and shutil.which("taskset"):
            command = ["taskset", "-c", "0", *command]  # one thread, one core, as the others pin
        t0 = time.perf_counter()
        done = subprocess.run(command, env=env_for(name))
        status = f", exit {done.returncode}" if done.returncode else ""
        print(f"\n# section {name}: {time.perf_counter() - t0:.0f} s{status}", flush=True)
        if done.returncode:
            sys.exit(done.returncode)


def choose_sections(parser, only: str, sections) -> list[str]:
    """The comma-separated ``--only`` value as a list of known sections (a parser error otherwise)."""
    chosen = [s.strip() for s in only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(sections))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(sections)}")
    return chosen
