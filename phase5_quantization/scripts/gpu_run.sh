#!/usr/bin/env bash
# One device call for phase 5: the GPU-marked tests, then the phase check at full size. Logs under $OUT.
# Usage (repository root, on the H100): bash phase5_quantization/scripts/gpu_run.sh [tests|check|all ...]
#   also: sweep (the kernels' quick configuration sweep), sweep-full, check-rtn (the check with RTN weights)
# Budget: the tests take ~1 min (Triton autotuning compiles a few configurations per shape), the check
# ~2-3 min (accuracy table on the GPU, kernel timings at TinyLlama shapes, two TinyLlama decode runs).
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/p5_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" > "$OUT/versions.txt" 2>&1
steps=${*:-all}
for step in $steps; do
  case $step in
    tests|all) timeout 150 python3 -m pytest phase5_quantization/tests -m gpu -q -x --durations=10 -p no:cacheprovider 2>&1 \
                 | tee "$OUT/tests.log" | tail -30 ;;&
    check|all) timeout 270 python3 -m module0_profiling.check phase5 --size full --out "$OUT/reports" 2>&1 \
                 | tee "$OUT/check.log" | tail -60 ;;&
    sweep) timeout 200 python3 -m phase5_quantization.scripts.gpu_gemv_sweep --quick --out "$OUT/sweep.json" 2>&1 \
                 | tee "$OUT/sweep.log" | tail -25 ;;
    sweep-full) timeout 290 python3 -m phase5_quantization.scripts.gpu_gemv_sweep --out "$OUT/sweep_full.json" 2>&1 \
                 | tee "$OUT/sweep_full.log" | tail -25 ;;
    check-rtn) timeout 270 python3 -m module0_profiling.check phase5 --impl framework --size full \
                 --out "$OUT/reports_rtn" 2>&1 | tee "$OUT/check_rtn.log" | tail -30 ;;
  esac
done
