#!/usr/bin/env bash
# Langevin dynamics of 64 periodic water molecules at 300 K with the bundled water potential.
# The water model exercises periodic MD; it is not a production water model (see potentials/README.md).
# STEPS in the environment overrides the 2,000 steps (tests/test_examples.py runs a few).
set -euo pipefail
cd "$(dirname "$0")"
STEPS=${STEPS:-2000}
mlff-md run water.xyz -m water-schnet --ensemble langevin --temperature 300 --friction 0.01 \
    --steps "$STEPS" --timestep-fs 0.5 --seed 1 --output langevin_water --overwrite
mlff-md report langevin_water.h5
