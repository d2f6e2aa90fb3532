#!/usr/bin/env bash
# One device call: tune sweep, GPU tests, then the phase check. Logs under $OUT.
# Usage: bash phase3_paged_attention/scripts/gpu_run.sh [tune|tests|check|all ...]
set -u
export PYTHONPATH=$PWD
OUT=${OUT:-/tmp/p3_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/nvidia-smi.txt" 2>&1
steps=${*:-all}
for step in $steps; do
  case $step in
    tune|all) timeout 150 python3 -m phase3_paged_attention.scripts.tune 2>&1 | tee "$OUT/tune.log" | tail -80 ;;&
    tune-decode) timeout 35 python3 -m phase3_paged_attention.scripts.tune decode 2>&1 | tee "$OUT/tune_decode.log" | tail -80 ;;
    tune-prefill) timeout 120 python3 -m phase3_paged_attention.scripts.tune prefill 2>&1 | tee "$OUT/tune_prefill.log" | tail -30 ;;
    tests|all) timeout 280 python3 -m pytest phase3_paged_attention/tests -q -x --durations=10 -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30 ;;&
    check|all) timeout 150 python3 -m module0_profiling.check phase3_paged_attention --out "$OUT/reports" 2>&1 | tee "$OUT/check.log" | tail -40 ;;&
    check-framework) timeout 250 python3 -m module0_profiling.check phase3_paged_attention --impl framework --out "$OUT/reports" 2>&1 | tee "$OUT/check_fw.log" | tail -20 ;;
  esac
done
