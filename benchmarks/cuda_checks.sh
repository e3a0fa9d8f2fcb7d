#!/usr/bin/env bash
# Issue 10's GPU checks in one go, for a machine with a CUDA device: the CUDA tests, then the
# K-FAC peer benchmark and SGN's cost benchmark with CUDA-event timing. Each part is bounded
# by a timeout so that one slow part cannot cost the others; logs and JSON go to the folder
# given as the first argument (default: cuda-results).
#
#     bash benchmarks/cuda_checks.sh [results-folder]
#
# The peers (asdfghjkl, nngeometry, curvlinops-for-pytorch) must be importable; where the
# machine has no package index, install them from wheels first and put them on PYTHONPATH.
set -o pipefail
out=${1:-cuda-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
gpu() { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,utilization.gpu,temperature.gpu --format=csv,noheader; }
{ echo "start: $(gpu)"; python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; uptime; } | tee "$out/machine.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" | tail -25
timeout 330 python3 benchmarks/kfac_peers.py --device cuda --repeats 5 --save "$out/kfac_peers.json" 2>&1 | tee "$out/kfac_peers.txt"
timeout 120 python3 benchmarks/sgn_costs.py --device cuda --repeats 9 2>&1 | tee "$out/sgn_costs.txt"
{ echo "end: $(gpu)"; uptime; } | tee -a "$out/machine.txt"
