#!/usr/bin/env bash
# Train -> evaluate -> run, on a small subset: minutes on a laptop CPU.
#   1. train a small SchNet on 200 of the rMD17 ethanol train01 frames (the official split's
#      training frames), validate on 50 frames tagged neither train01 nor test01;
#   2. evaluate it on the frames tagged test01 (never seen in training or model selection);
#   3. run 2,000 NVE steps with it and report energy conservation.
# DATA (first argument) defaults to data/ethanol_rmd17_subset.extxyz.gz, shipped with the
# examples (see data/README.md); any extxyz with energies, forces and rmd17_splits tags works.
# EPOCHS, MAX_TIME (minutes) and STEPS may be set in the environment to shorten the walk-through
# (tests/test_examples.py does); the defaults below are the walk-through's.
set -euo pipefail
cd "$(dirname "$0")"
DATA=${1:-data/ethanol_rmd17_subset.extxyz.gz}
EPOCHS=${EPOCHS:-300}
MAX_TIME=${MAX_TIME:-3}
STEPS=${STEPS:-2000}
mlff-md train "$DATA" --arch schnet --features 32 --interactions 2 --output walkthrough.pt \
    --split-tag rmd17_splits:train01:test01 --n-train 200 --n-val 50 --val-block 10 \
    --lr 2e-3 --epochs "$EPOCHS" --max-time "$MAX_TIME" --overwrite
mlff-md info walkthrough.pt
# the parity plot needs matplotlib (pip install -e ".[plot]"); without it, the table alone
plot=()
if python -c "import matplotlib" 2>/dev/null; then
    plot=(--plot walkthrough_parity.png)
else
    echo "matplotlib is not installed: no parity plot (pip install matplotlib)"
fi
mlff-md eval walkthrough.pt "$DATA" --subset test "${plot[@]}"
mlff-md run ethanol.xyz -m walkthrough.pt --ensemble nve --steps "$STEPS" --seed 1 \
    --output walkthrough_nve --overwrite
mlff-md report walkthrough_nve.h5
