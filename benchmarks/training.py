"""Training throughput: our trainer against SchNetPack 2.1.1's, and DDP on two processes.

    /work/main/.venv/bin/python benchmarks/training.py                   # rMD17 ethanol, energy + forces
    /work/main/.venv/bin/python benchmarks/training.py --dataset qm9     # QM9 subset, energy only
    /work/main/.venv/bin/python benchmarks/training.py --ddp             # 2 processes x 1 thread vs 1 x 2
    /work/main/.venv/bin/python benchmarks/training.py --quick           # smoke run

Both trainers fit the same SchNet (64 features, 3 interactions, 20 Gaussians on
[0, 5 Å], cosine cutoff, readout 64 → 32 → 1, float32) on the same frames with
the same batch size, Adam at 5e-4 and a gradient-norm clip of 10: ours through
``Trainer`` (its epoch loop, EMA included), SchNetPack's as ``spktrain`` runs it,
an ``AtomisticTask`` in a PyTorch Lightning ``Trainer`` fed by ``AtomsDataModule``
with the md17 experiment's transforms (SubtractCenterOfMass, RemoveOffsets,
MatScipyNeighborList, CastTo32), no validation loop in the timed epochs. Each
tool runs in its own process (SchNetPack in ``--spk-python``'s environment),
pinned to core 0 with one thread, rounds interleaved (ours, SchNetPack, ours,
...); the first epoch of every process is a warm-up, frames/s come from the
epochs after it. ``--ddp`` compares, for our trainer alone on cores 0-1, torchrun
with two processes of one thread against one process with two threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("MLFF_BENCH_DATA", HERE.parents[1] / "shared" / "data"))
FILES = {"ethanol": DATA / "ethanol_rmd17_train.extxyz.gz", "qm9": DATA / "qm9_U0_train.extxyz.gz"}
SPK_PYTHON = "/work/main/spk-venv/bin/python"
HYPER = dict(cutoff=5.0, n_features=64, n_interactions=3, n_rbf=20, learning_rate=5e-4, grad_clip=10.0)


def read_frames(dataset: str, n_frames: int):
    from ase.io import read

    return read(FILES[dataset], index=f":{n_frames}")


# -- workers (one process each; print one JSON line) -----------------------------
def worker_ours(args) -> None:
    import numpy as np
    import torch

    from ase_mlff.training.data import read_dataset
    from ase_mlff.training.distributed import from_environment
    from ase_mlff.training.splits import Split
    from ase_mlff.training.trainer import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    dist = from_environment("cpu")
    data = read_dataset(FILES[args.dataset], index=f":{args.frames + 10}")
    split = Split(train=list(range(args.frames)), val=list(range(args.frames, args.frames + 10)), test=[])
    config = TrainConfig(architecture="schnet", batch_size=args.batch_size, optimizer="adam", device="cpu",
                         dtype="float32", **HYPER)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        trainer = Trainer(data, split, config, Path(tmp) / "m.pt", echo=None, distributed=dist)
        setup_s = time.perf_counter() - start  # neighbor lists of every frame, built once
        times = []
        for epoch in range(args.epochs):
            dist.barrier()
            start = time.perf_counter()
            trainer.epoch = epoch
            trainer._train_epoch()
            dist.barrier()
            times.append(time.perf_counter() - start)
    if dist.is_main:
        timed = times[1:]
        print(json.dumps({"tool": "ours", "frames_per_s": args.frames * len(timed) / float(np.sum(timed)),
                          "epoch_s": timed, "setup_s": setup_s, "processes": dist.world_size,
                          "threads": torch.get_num_threads()}))
    dist.close()


def worker_spk(args) -> None:
    import torch
    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):  # schnetpack 2.1.1 imports a name torch 2.13 renamed
        dataloader.T_co = dataloader._T_co
    import pytorch_lightning as pl
    import schnetpack as spk
    import schnetpack.transform as trn
    import torchmetrics

    torch.set_num_threads(args.threads)
    frames = read_frames(args.dataset, args.frames + 10)
    forces = args.dataset == "ethanol"
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # AtomsDataModule leaves a splitting.lock in the working folder
        db = Path(tmp) / "data.db"
        units = {"energy": "eV", **({"forces": "eV/Ang"} if forces else {})}
        dataset = spk.data.ASEAtomsData.create(str(db), distance_unit="Ang", property_unit_dict=units)
        properties = [{"energy": torch.tensor([a.get_potential_energy() if a.calc else a.info["energy"]],
                                              dtype=torch.float64).numpy(),
                       **({"forces": a.get_forces()} if forces else {})} for a in frames]
        dataset.add_systems(properties, frames)
        split_file = Path(tmp) / "split.npz"
        import numpy as np

        np.savez(split_file, train_idx=np.arange(args.frames), val_idx=np.arange(args.frames, args.frames + 10),
                 test_idx=np.array([], dtype=int))
        module = spk.data.AtomsDataModule(
            str(db), batch_size=args.batch_size, split_file=str(split_file), num_workers=0,
            transforms=[trn.SubtractCenterOfMass(), trn.RemoveOffsets("energy", remove_mean=True),
                        trn.MatScipyNeighborList(cutoff=HYPER["cutoff"]), trn.CastTo32()],
            load_properties=list(units), pin_memory=False)
        module.prepare_data()
        module.setup()
        representation = spk.representation.SchNet(
            n_atom_basis=HYPER["n_features"], n_interactions=HYPER["n_interactions"],
            radial_basis=spk.nn.GaussianRBF(n_rbf=HYPER["n_rbf"], cutoff=HYPER["cutoff"]),
            cutoff_fn=spk.nn.CosineCutoff(HYPER["cutoff"]))
        outputs = [spk.atomistic.Atomwise(n_in=HYPER["n_features"], output_key="energy")]
        if forces:
            outputs.append(spk.atomistic.Forces(energy_key="energy", force_key="forces"))
        model = spk.model.NeuralNetworkPotential(
            representation=representation, input_modules=[spk.atomistic.PairwiseDistances()],
            output_modules=outputs,
            postprocessors=[trn.CastTo64(), trn.AddOffsets("energy", add_mean=True)])

        def output(name, weight):
            metrics = {"mae": torchmetrics.regression.MeanAbsoluteError(),
                       "rmse": torchmetrics.regression.MeanSquaredError(squared=False)}
            return spk.task.ModelOutput(name=name, loss_fn=torch.nn.MSELoss(), loss_weight=weight, metrics=metrics)

        task = spk.task.AtomisticTask(
            model=model, outputs=[output("energy", 0.01), output("forces", 0.99)] if forces else
            [output("energy", 1.0)], optimizer_cls=torch.optim.Adam,
            optimizer_args={"lr": HYPER["learning_rate"]})

        class Clock(pl.Callback):
            def __init__(self):
                self.times = []

            def on_train_epoch_start(self, trainer, module):
                self.start = time.perf_counter()

            def on_train_epoch_end(self, trainer, module):
                self.times.append(time.perf_counter() - self.start)

        clock = Clock()
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=HYPER["grad_clip"],
                             callbacks=[clock], default_root_dir=tmp, inference_mode=False)
        trainer.fit(task, datamodule=module)
    timed = clock.times[1:]
    print(json.dumps({"tool": "schnetpack", "frames_per_s": args.frames * len(timed) / sum(timed),
                      "epoch_s": timed, "processes": 1, "threads": torch.get_num_threads(),
                      "version": spk.__version__ if hasattr(spk, "__version__") else "?"}))


# -- the driver -----------------------------------------------------------------------
def _run(command: list[str], env: dict) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(FILES), default="ethanol")
    parser.add_argument("--frames", type=int, default=None, help="training frames (default 1000; qm9 2000)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="per process, the first a warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ddp", action="store_true", help="DDP 2 x 1 thread vs 1 process x 2 threads (ours)")
    parser.add_argument("--spk-python", default=SPK_PYTHON)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=["ours", "spk"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.frames is None:
        args.frames = 200 if args.quick else (2000 if args.dataset == "qm9" else 1000)
    if args.quick:
        args.rounds, args.epochs = 1, 2
    if args.worker == "ours":
        return worker_ours(args)
    if args.worker == "spk":
        return worker_spk(args)

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    common = ["--dataset", args.dataset, "--frames", str(args.frames), "--batch-size", str(args.batch_size),
              "--epochs", str(args.epochs)]
    me = [str(Path(__file__).resolve())]
    if args.ddp:
        columns = {
            "1 process × 2 threads": ["taskset", "-c", "0,1", sys.executable, *me, "--worker", "ours",
                                      "--threads", "2", *common],
            "2 processes × 1 thread (DDP)": ["taskset", "-c", "0,1", sys.executable, "-m", "torch.distributed.run",
                                             "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                                             "--master-port", "29517", *me, "--worker", "ours", "--threads", "1",
                                             *common],
        }
        env2 = dict(env, OMP_NUM_THREADS="2")
    else:
        columns = {
            "ase-mlff": ["taskset", "-c", "0", sys.executable, *me, "--worker", "ours", *common],
            "SchNetPack 2.1.1": ["taskset", "-c", "0", args.spk_python, *me, "--worker", "spk", *common],
        }
        env2 = env
    results = {name: [] for name in columns}
    for round_ in range(args.rounds):
        for name, command in columns.items():
            result = _run(command, env2 if "2 threads" in name else env)
            results[name].append(result["frames_per_s"])
            setup = f", set-up {result['setup_s']:.1f} s" if "setup_s" in result else ""
            print(f"# round {round_ + 1}: {name}: {result['frames_per_s']:.1f} frames/s "
                  f"(epochs {', '.join(f'{t:.2f}' for t in result['epoch_s'])} s{setup})", flush=True)
    task = "energy + forces" if args.dataset == "ethanol" else "energy only"
    print(f"\n{args.dataset} ({task}), {args.frames} training frames, batch {args.batch_size}, "
          f"{args.epochs - 1} timed epochs × {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}\n")
    print("| trainer | frames/s (median) | all rounds |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    names = list(results)
    ratio = statistics.median(results[names[1]]) / statistics.median(results[names[0]])
    if not args.ddp:
        ratio = 1 / ratio
    print(f"\nratio {names[0] if not args.ddp else names[1]} / {names[1] if not args.ddp else names[0]}: "
          f"{ratio:.2f}x")


if __name__ == "__main__":
    main()
