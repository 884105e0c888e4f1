"""Neighbor-list speed: ase-mlff against ASE, matscipy and vesin, in one run.

    python benchmarks/neighbors.py            # ethanol and water boxes up to 98,304 atoms
    python benchmarks/neighbors.py --quick    # ethanol, 192 and 1,536 atoms

Systems: ethanol (9 atoms, open) and the 192-atom DeePMD water frame repeated
1, 2, 4 and 8 times per axis (192 ... 98,304 atoms), periodic and the same
atoms without a cell. Cutoff 5 Å, full list (both directions) with integer
cell shifts, float64 positions: every tool must find the same number of pairs.

"ours" is the full path a calculator takes from a prebuilt ``Batch``
(``NeighborList.build``), with the builder reused between calls as in MD;
converting ``Atoms`` to a ``Batch`` is timed separately (column "atoms→batch").
Peers are optional (see benchmarks/README.md); a missing one leaves its column
empty. ASE's ``neighbor_list`` on atoms without a cell is O(N²) in time and
memory and is skipped above ``--max-ase-open`` atoms; ASE is timed once (not
interleaved) where one call takes more than a few seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ethanol, fmt_ms, fmt_ratio, machine, optional, round_robin, table, water_box, without_cell  # noqa: E402

from ase_mlff.batch import atoms_to_batch  # noqa: E402
from ase_mlff.neighbors import NeighborList, has_torch_cluster  # noqa: E402
from ase_mlff.threads import set_threads  # noqa: E402

CUTOFF = 5.0
# dense torch search: above this many (atom, image) candidate pairs it is minutes, not ms
DENSE_MAX_CANDIDATES = 30_000_000


def systems(quick: bool):
    out = [("ethanol", ethanol())]
    for repeat in (1, 2) if quick else (1, 2, 4, 8):
        box = water_box(repeat)
        out.append((f"water pbc {len(box):,}", box))
    for repeat in (1, 2) if quick else (1, 2, 4, 8):
        box = without_cell(water_box(repeat))
        out.append((f"water open {len(box):,}", box))
    return out


def dense_only(neighborlist: NeighborList, batch):
    """The pure-torch list with its all-pairs search forced at every size.

    "auto" and "torch" run the same code, which picks the all-pairs search or
    the cell list by size; raising the module's private crossover limits for
    the duration of the call shows what the all-pairs search alone costs.
    """
    import ase_mlff.neighbors as module

    def run():
        saved = module._DENSE_PAIRS_LIMIT, module._DENSE_BLOCK_LIMIT
        module._DENSE_PAIRS_LIMIT = module._DENSE_BLOCK_LIMIT = 10**15
        try:
            return neighborlist(batch).n_edges
        finally:
            module._DENSE_PAIRS_LIMIT, module._DENSE_BLOCK_LIMIT = saved

    return run


def peer_tools(atoms, ase_nl, matscipy_nl, vesin_mod):
    """name -> function returning the number of pairs found."""
    tools = {}
    periodic = bool(atoms.pbc.any())
    if ase_nl is not None:
        tools["ASE"] = lambda: len(ase_nl("i", atoms, CUTOFF))
    if matscipy_nl is not None:
        if periodic:
            tools["matscipy"] = lambda: len(matscipy_nl("ijS", atoms, CUTOFF)[0])
        else:  # matscipy needs a cell; given bare positions it wraps them in their bounding box
            positions = atoms.positions
            tools["matscipy"] = lambda: len(matscipy_nl("ijS", positions=positions, cutoff=CUTOFF)[0])
    if vesin_mod is not None:
        calculator = vesin_mod.NeighborList(cutoff=CUTOFF, full_list=True)
        box = atoms.cell.array if periodic else np.zeros((3, 3))
        tools["vesin"] = lambda: len(calculator.compute(atoms.positions, box, atoms.pbc, "ijS")[0])
    return tools


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small systems, few repeats")
    parser.add_argument("--max-ase-open", type=int, default=3000,
                        help="largest open system given to ASE (O(N^2) memory)")
    parser.add_argument("--max-ase", type=int, default=100_000, help="largest system given to ASE at all")
    args = parser.parse_args(argv)

    neighborlist = optional("ase.neighborlist", "pip install ase")
    matscipy = optional("matscipy.neighbours", "pip install matscipy")
    vesin = optional("vesin", "pip install vesin")
    if not has_torch_cluster():
        print("# torch-cluster unavailable: column 'torch-cluster' empty "
              "(pip install --no-build-isolation torch-cluster)")

    min_time = 0.2 if args.quick else 1.0
    rows_abs, rows_ratio = [], []
    for name, atoms in systems(args.quick):
        n = len(atoms)
        threads = set_threads(n_atoms=n)  # what MLFFCalculator would choose for this size
        batch = atoms_to_batch(atoms, dtype=torch.float64)
        ours = {"auto": NeighborList(CUTOFF, "auto")}
        if has_torch_cluster():
            ours["torch-cluster"] = NeighborList(CUTOFF, "torch-cluster")
        n_images_guess = n * (7 if atoms.pbc.any() and n < 1000 else 2 if atoms.pbc.any() else 1)
        fast = {f"ours {k}": (lambda nl=nl: nl(batch).n_edges) for k, nl in ours.items()}
        if n * n_images_guess <= DENSE_MAX_CANDIDATES:
            fast["ours torch"] = dense_only(NeighborList(CUTOFF, "torch"), batch)
        ase_nl = neighborlist.neighbor_list if neighborlist is not None else None
        skip_ase = n > args.max_ase or (not atoms.pbc.any() and n > args.max_ase_open)
        peers = peer_tools(atoms, None if skip_ase else ase_nl, getattr(matscipy, "neighbour_list", None), vesin)
        slow = {}
        if "ASE" in peers and n > 5000:  # seconds per call: time it once, outside the rounds
            slow["ASE"] = peers.pop("ASE")
        functions = {**fast, **peers}

        pairs = {k: f() for k, f in {**functions, **slow}.items()}
        reference = pairs["ours auto"]
        mismatch = {k: v for k, v in pairs.items() if v != reference}
        if mismatch:
            print(f"# PAIR COUNT MISMATCH on {name}: ours {reference}, {mismatch}")

        rounds = dict(min_time=min_time, min_rounds=3 if n > 50_000 else 5)
        times = round_robin(functions, **rounds)
        for k, f in slow.items():
            t0 = time.perf_counter()
            f()
            times[k] = time.perf_counter() - t0
        to_batch = round_robin({"a2b": lambda: atoms_to_batch(atoms, dtype=torch.float64)}, min_time=0.1)["a2b"]

        mine = times["ours auto"]
        get = times.get
        rows_abs.append([name, f"{reference:,}", str(threads), fmt_ms(mine), fmt_ms(get("ours torch-cluster")),
                         fmt_ms(get("ours torch")), fmt_ms(to_batch), fmt_ms(get("ASE")),
                         fmt_ms(get("matscipy")), fmt_ms(get("vesin"))])
        rows_ratio.append([name] + [fmt_ratio(get(k) / mine if get(k) else None)
                                    for k in ("ASE", "matscipy", "vesin")]
                          + ["ok" if not mismatch else "MISMATCH"])
        print(f"# done {name}", flush=True)

    print(f"\nNeighbor list, cutoff {CUTOFF} Å, float64, median ms per call ({machine()}; "
          "'threads': torch threads ase-mlff used, as MLFFCalculator would set them)\n")
    print(table(["system", "pairs", "threads", "ours (auto)", "ours torch-cluster", "ours all-pairs (forced)",
                 "atoms→batch", "ASE", "matscipy", "vesin"], rows_abs))
    print("\nSpeed-up of ours (auto) over each peer (peer time / our time; > 1: ours is faster)\n")
    print(table(["system", "vs ASE", "vs matscipy", "vs vesin", "same pairs"], rows_ratio))


if __name__ == "__main__":
    main()
