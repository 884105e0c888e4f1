#!/usr/bin/env bash
# The device check for a session that is lent a GPU (one short script; the time is scarce):
# the CUDA tests, then the engine's GPU benchmark. Run from the repository root, e.g. through
# the device tool with the project's venv carried along.
set -euo pipefail
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name())"
python -c "import ase_mlff.neighbors as n; print('torch-cluster:', n.has_torch_cluster())"
python -m pytest -m gpu -q -p no:cacheprovider
python benchmarks/md_gpu.py --replicas 1,512 --steps 300 --rounds 3
