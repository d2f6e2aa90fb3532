#!/usr/bin/env bash
# One device call: tune sweep, GPU tests, then the phase check. Logs under $OUT.
# Usage: bash phase3_paged_attention/scripts/gpu_run.sh [tune|flashinfer|tests|check|all ...]
# FlashInfer (P3.6) comes from carried wheels (.whl*/, module0's device_site.sh); "flashinfer" JIT-builds its
# kernels with nvcc (minutes, cached in ~/.cache/flashinfer while the machine stays warm) before tests and check.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
source module0_profiling/scripts/device_site.sh
OUT=${OUT:-/tmp/p3_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/nvidia-smi.txt" 2>&1
steps=${*:-all}
for step in $steps; do
  case $step in
    tune|all) timeout 150 python3 -m phase3_paged_attention.scripts.tune 2>&1 | tee "$OUT/tune.log" | tail -80 ;;&
    tune-decode) timeout 35 python3 -m phase3_paged_attention.scripts.tune decode 2>&1 | tee "$OUT/tune_decode.log" | tail -80 ;;
    tune-prefill) timeout 120 python3 -m phase3_paged_attention.scripts.tune prefill 2>&1 | tee "$OUT/tune_prefill.log" | tail -30 ;;
    flashinfer|all) timeout 540 python3 -m phase3_paged_attention.peers 2>&1 | tee "$OUT/flashinfer_jit.log" | tail -8 ;;&
    tests|all) timeout 280 python3 -m pytest phase3_paged_attention/tests -q -x --durations=10 -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30 ;;&
    check|all) timeout 240 python3 -m module0_profiling.check phase3_paged_attention --out "$OUT/reports" 2>&1 | tee "$OUT/check.log" | tail -40 ;;&
    check-framework) timeout 250 python3 -m module0_profiling.check phase3_paged_attention --impl framework --out "$OUT/reports" 2>&1 | tee "$OUT/check_fw.log" | tail -20 ;;
  esac
done
