#!/usr/bin/env bash
# Train -> evaluate -> run, on a small subset: minutes on a laptop CPU.
#   1. train a small SchNet on 200 of the rMD17 ethanol train01 frames (the official split's
#      training frames), validate on 50 frames tagged neither train01 nor test01;
#   2. evaluate it on the frames tagged test01 (never seen in training or model selection);
#   3. run 2,000 NVE steps with it and report energy conservation.
# DATA defaults to the project's copy of rMD17 ethanol; any extxyz with energies and forces works.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${1:-../../shared/data/ethanol_rmd17_train.extxyz.gz}
mlff-md train "$DATA" --arch schnet --features 32 --interactions 2 --output walkthrough.pt \
    --split-tag rmd17_splits:train01:test01 --n-train 200 --n-val 50 --val-block 10 \
    --lr 2e-3 --epochs 300 --max-time 3 --overwrite
mlff-md info walkthrough.pt
mlff-md eval walkthrough.pt "$DATA" --subset test --plot walkthrough_parity.png
mlff-md run ethanol.xyz -m walkthrough.pt --ensemble nve --steps 2000 --seed 1 \
    --output walkthrough_nve --overwrite
mlff-md report walkthrough_nve.h5
