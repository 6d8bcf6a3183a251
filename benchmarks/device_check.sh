#!/usr/bin/env bash
# The GPU checks, as one short script for a machine with CUDA (about 5 minutes on an H100):
#   1. Testing/test_device.py: every method family, the window-by-window paths, float16 and a
#      whole run give the CPU's results on the GPU;
#   2. the `cuda` benchmark: the issue's 128^3 and 512x512x256 cases against captum and MONAI.
# Results go to $OUT (default /tmp/torchesegeta-device). The engine's dependencies (torch with
# CUDA, monai, captum, SimpleITK, scipy, matplotlib, tqdm, PyYAML, pytest) must be importable.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/torchesegeta-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider Testing/test_device.py 2>&1 | tee "$OUT/tests.txt"
tests=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/bench.py --config cuda --repeat 3 \
  --skip-occlusion-reference --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
bench=${PIPESTATUS[0]}
echo "device tests exit $tests, benchmark exit $bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
