"""Data-parallel training: two CPU processes under torchrun against one process.

The reference is a single-process run with the same global batch. In float64
the two differ only by the order of floating-point sums (the all-reduce adds
the two ranks' partial gradients), i.e. relative ~1e-14 per step; after a few
Adam steps (whose normalisation amplifies nothing at this size) 1e-10 leaves
four orders of margin, while a wrong loss scaling (rank mean instead of global
mean, duplicated frames) moves weights by ~1e-4.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ase_mlff.cli import main
from ase_mlff.io import read_model_record
from ase_mlff.training.distributed import SINGLE, Distributed

DATA = Path(__file__).parent / "data"
ETHANOL = DATA / "ethanol_rmd17_50frames.extxyz.gz"
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    # a rank waiting for a dead peer would give up only after 10 min: the subprocess timeouts
    # below (at most 150 s) fail the test long before, so passing means nobody hung
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFF_DDP_TIMEOUT_S="600")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _torchrun(*args, timeout=150) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


def test_shards_cover_each_frame_once():
    batch = list(range(7))
    ranks = [Distributed(r, 2, r) for r in range(2)]
    assert sorted(ranks[0].shard(batch) + ranks[1].shard(batch)) == batch
    assert ranks[0].shard([5]) == [5] and ranks[1].shard([5]) == []
    for n in (0, 1, 7, 8):
        blocks = [list(Distributed(r, 3, r).block(n)) for r in range(3)]
        assert sum(blocks, []) == list(range(n))
    assert SINGLE.shard(batch) == batch and list(SINGLE.block(4)) == [0, 1, 2, 3]
    assert SINGLE.sum(2.5) == 2.5 and SINGLE.broadcast("x") == "x" and SINGLE.gather(1) == [1]


def _train_args(out, *extra):
    # 50 frames - 7 val - 7 test = 36 train: batches of 7 split 4 + 3 frames over two
    # ranks, and the last batch (1 frame) leaves rank 1 with none
    return ["train", ETHANOL, "--arch", "schnet", "-o", out, "--features", "8", "--interactions", "1",
            "--rbf", "6", "--batch-size", "7", "--n-val", "7", "--n-test", "7", "--seed", "3",
            "--device", "cpu", "--dtype", "float64", "--threads", "1", "--ema-decay", "0.5",
            "--loss-beta", "0.8", *extra]


def test_torchrun_two_processes_equal_one_process_and_resume(tmp_path):
    """One epoch in one process, resumed for a second epoch by two processes under torchrun,
    equals two epochs in one process (one torchrun launch keeps the test short)."""
    runner = CliRunner()
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    result = runner.invoke(main, [str(a) for a in _train_args(single, "--epochs", "1", "-q")])
    assert result.exit_code == 0, result.output
    for suffix in (".pt", ".pt.ckpt", ".split.json", ".log.csv"):
        shutil.copy(tmp_path / f"single{suffix}", tmp_path / f"ddp{suffix}")
    after_one = torch.load(str(single) + ".ckpt", weights_only=True)

    resumed = _torchrun("-m", "ase_mlff.cli", *_train_args(ddp, "--epochs", "2", "--resume"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("resuming after epoch 1") == 1, resumed.stdout  # rank 0 alone prints
    assert resumed.stdout.count("epoch     2") == 1 and "× 2 processes" in resumed.stdout, resumed.stdout
    result = runner.invoke(main, [str(a) for a in _train_args(single, "--epochs", "2", "-q", "--resume")])
    assert result.exit_code == 0, result.output

    a = torch.load(str(ddp) + ".ckpt", weights_only=True)
    b = torch.load(str(single) + ".ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema", "optimizer"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert flat_a.keys() == flat_b.keys()
        for name, value in flat_b.items():
            torch.testing.assert_close(flat_a[name], value, rtol=0, atol=1e-10, msg=f"{key} {name}")
    # the comparison can fail: the second epoch moved the weights by far more than 1e-10
    moved = max(float((b["model"][k] - v).abs().max()) for k, v in after_one["model"].items())
    assert moved > 1e-5, moved
    # one log, written once (two writers would duplicate rows); metrics equal the single run's
    log_ddp = np.genfromtxt(tmp_path / "ddp.log.csv", delimiter=",", names=True)
    log_one = np.genfromtxt(tmp_path / "single.log.csv", delimiter=",", names=True)
    assert log_ddp["epoch"].tolist() == [1, 2]
    for column in ("train_loss", "val_loss", "val_energy_mae_meV_per_atom", "val_forces_mae_meV_per_A"):
        np.testing.assert_allclose(log_ddp[column], log_one[column], rtol=1e-5, err_msg=column)
    assert "processes (DDP)" in read_model_record(ddp)["metadata"]["training"]["hardware"]


def _tensors(tree, prefix="") -> dict:
    """Every tensor of a (nested) state dict, keyed by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


_FAILING_RANK = textwrap.dedent("""
    import os, signal, sys
    from ase_mlff.training.data import read_dataset
    from ase_mlff.training.distributed import from_environment
    from ase_mlff.training.splits import random_split
    from ase_mlff.training.trainer import TrainConfig, Trainer

    mode, data, out = sys.argv[1:4]
    dist = from_environment("cpu")
    dataset = read_dataset(data)
    split = random_split(len(dataset), n_val=6, n_test=0, seed=0)
    config = TrainConfig(architecture="schnet", n_features=8, n_interactions=1, n_rbf=6, batch_size=8,
                         max_epochs=50, device="cpu")
    trainer = Trainer(dataset, split, config, out, echo=None, distributed=dist)
    validate, calls = trainer._validate, []

    def failing_validate():
        calls.append(1)
        if dist.rank == 1 and len(calls) == 2:
            if mode == "raise":
                raise RuntimeError("injected failure on rank 1")
            os.kill(os.getpid(), signal.SIGTERM)
        return validate()

    trainer._validate = failing_validate
    trainer.fit()
""")


@pytest.mark.parametrize("mode", ["raise", "sigterm"])
def test_a_failing_rank_ends_the_job_with_a_message(tmp_path, mode):
    script = tmp_path / "failing_rank.py"
    script.write_text(_FAILING_RANK)
    # a hang ends in subprocess.TimeoutExpired: the test fails
    run = _torchrun(script, mode, ETHANOL, tmp_path / "m.pt", timeout=150)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output
    expected = "injected failure on rank 1" if mode == "raise" else "rank 1 of 2: stopped by SIGTERM"
    assert expected in output, output
