#!/usr/bin/env bash
# NVE molecular dynamics of ethanol with the bundled PaiNN (chosen automatically for C/H/O),
# then the energy-conservation report. 10,000 steps of 0.5 fs = 5 ps (STEPS in the environment
# overrides the count; tests/test_examples.py runs a few).
set -euo pipefail
cd "$(dirname "$0")"
STEPS=${STEPS:-10000}
mlff-md run ethanol.xyz --ensemble nve --temperature 300 --steps "$STEPS" --timestep-fs 0.5 \
    --seed 1 --output nve_ethanol --overwrite
mlff-md report nve_ethanol.h5
