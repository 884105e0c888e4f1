#!/usr/bin/env bash
#SBATCH --job-name=mlff-ddp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
# Data-parallel training with torchrun (PyTorch DDP): NCCL on GPUs, gloo on CPUs.
#   sbatch train_ddp.sh [DATA]   Slurm: one torchrun per node (--ntasks-per-node=1), GPUS_PER_NODE
#                                processes each, meeting at the first node of the job (c10d rendezvous);
#                                submit from the examples folder (outputs go to the submit folder)
#   bash train_ddp.sh [DATA]     this machine alone: NPROC (default 2) CPU processes
# --batch-size is the global batch, split over all processes; rank 0 writes the model, its
# checkpoint, split and log. EPOCHS, NPROC, GPUS_PER_NODE and THREADS (per process) may be set.
# A rerun continues an interrupted run from its checkpoint (--resume); delete ddp_ethanol.pt* to start over.
set -euo pipefail
DATA=${1:-data/ethanol_rmd17_subset.extxyz.gz}
EPOCHS=${EPOCHS:-300}
if [ -n "${SLURM_JOB_ID:-}" ]; then
    cd "$SLURM_SUBMIT_DIR"
    head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    launch=(srun torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc-per-node "${GPUS_PER_NODE:-4}"
            --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" --rdzv-id "$SLURM_JOB_ID")
else
    cd "$(dirname "$0")"
    launch=(torchrun --standalone --nproc-per-node "${NPROC:-2}")
fi
resume=()
if [ -f ddp_ethanol.pt.ckpt ]; then
    resume=(--resume)
fi
"${launch[@]}" "$(command -v mlff-md)" train "$DATA" --arch schnet --features 32 --interactions 2 \
    --output ddp_ethanol.pt --split-tag rmd17_splits:train01:test01 --n-train 200 --n-val 50 --val-block 10 \
    --batch-size 20 --lr 2e-3 --epochs "$EPOCHS" --threads "${THREADS:-1}" "${resume[@]}"
mlff-md info ddp_ethanol.pt
