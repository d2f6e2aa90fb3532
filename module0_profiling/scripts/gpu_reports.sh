#!/usr/bin/env bash
# On a GPU machine: run the checks of the phases named in PHASES (default: module0 phase2 phase0) and,
# when TESTS is set, those GPU tests; the reports land under $OUT as one tarball (reports.tgz). SWEEP=1 runs
# phase 5's GEMV sweep first and keeps its table (tuned/<gpu>.json: commit it under phase5_quantization/kernels/).
# Device tool usage: carry [".whl"] (or .whlA/.whlB over two calls) for optional peers and the Rust extension
# (device_site.sh).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/out}"
R="$OUT/r"
mkdir -p "$R"
source module0_profiling/scripts/device_site.sh  # carried wheels (.whl*/) -> .site on PYTHONPATH
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
if [ -n "${SWEEP:-}" ]; then  # phase 5's W4A16 GEMV sweep first: its table (kernels/tuned/<gpu>.json) serves the checks
  echo "=== phase 5 GEMV sweep"
  timeout "${SWEEP_TIMEOUT:-240}" python3 -m phase5_quantization.scripts.gpu_gemv_sweep --quick --write-table \
    --out "$R/gemv_sweep.json" > "$R/gemv_sweep.log" 2>&1
  tail -25 "$R/gemv_sweep.log"
  mkdir -p "$R/tuned" && cp phase5_quantization/kernels/tuned/*.json "$R/tuned/" 2>/dev/null
fi
for p in ${PHASES:-module0 phase2 phase0}; do
  if [ "$p" = phase3 ]; then  # FlashInfer's kernels JIT-build for minutes at first use: before the check's timeout
    echo "=== FlashInfer (P3.6's peer) kernels"
    timeout 540 python3 -m phase3_paged_attention.peers 2>&1 | tail -3
  fi
  echo "=== check $p"
  timeout "${CHECK_TIMEOUT:-300}" python3 -m module0_profiling.check "$p" --out "$R" 2>&1 | grep -v -e USDT -e _warn_once -e "Profiler clears"
done
if [ -n "${TESTS:-}" ]; then
  echo "=== tests $TESTS"
  timeout "${TEST_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider $TESTS 2>&1 | tail -15
fi
tar czf "$OUT/reports.tgz" -C "$R" .
