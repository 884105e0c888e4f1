#!/usr/bin/env bash
# NVE molecular dynamics of ethanol with the bundled PaiNN (chosen automatically for C/H/O),
# then the energy-conservation report. 10,000 steps of 0.5 fs = 5 ps.
set -euo pipefail
cd "$(dirname "$0")"
mlff-md run ethanol.xyz --ensemble nve --temperature 300 --steps 10000 --timestep-fs 0.5 \
    --seed 1 --output nve_ethanol --overwrite
mlff-md report nve_ethanol.h5
