#!/usr/bin/env bash
# GPU verification of phase 0 in one device call: versions, the full bench + targets, the GPU tests.
# Usage (repo root): OUT=/tmp/out bash phase0_prototype/scripts/gpu_smoke.sh [impl]
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/phase0_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -c "import cupy; print('cupy', cupy.__version__)" || echo "no cupy"
python3 -m pytest --version || echo "no pytest"
timeout ${BENCH_TIMEOUT:-200} python3 phase0_prototype/scripts/gpu_bench.py ${1:-solution} full 2>&1 | tee "$OUT/bench.log" | grep -v "^\[phase0 bench" | tail -80
grep "^\[phase0 bench" "$OUT/bench.log" | tail -12
timeout ${TEST_TIMEOUT:-80} python3 -m pytest ${TESTS:-phase0_prototype/tests/test_p0_cuda_basics.py phase0_prototype/tests/test_p0_gpu.py} -q -p no:cacheprovider 2>&1 | tail -15
