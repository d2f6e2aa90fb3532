#!/usr/bin/env bash
# On a GPU machine: the diagnostics behind the checks, logs under $OUT. JOBS (default "p0var bs1 p4diag"):
#   p0var   phase 0 decode-step variants (launch points, attention, GEMV tiles)   ~40 s
#   p0ops   phase 0 projections one by one and chained, per tile config       ~60 s
#   bs1     the engine's bs=1 decode beside phase 0 called directly (E.1a)          ~60 s
#   p4diag  phase 4 step timing, GPU busy at 256/512/1024 requests, host profile ~80 s
#   p5sweep phase 5 W4A16 GEMV sweep (SWEEP_ARGS, default --quick)              ~150 s
#   p5step  phase 5 INT4 decode step: kernel-choice variants and the pieces     ~120 s
#   p5ncu   Nsight Compute on the INT4 kernels at one row and 16 (if ncu runs) ~60 s
#   p5ncu16 Nsight Compute on P5.2's M = 16 products (stall reasons)        ~60 s
# Device tool usage: carry [".whl"] (or .whlA/.whlB over two calls): optional peers and the Rust extension (device_site.sh).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
OUT="${OUT:-$PWD/out}"; mkdir -p "$OUT"
P0OPS="$OUT/p0ops.json"  # p0ops ranks each projection's tiles; p0var then runs the best together
source module0_profiling/scripts/device_site.sh  # carried wheels (.whl*/) -> .site on PYTHONPATH
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
for job in ${JOBS:-p0var bs1 p4diag}; do
  echo "=== $job"
  case $job in
    p0var) timeout 260 python3 phase0_prototype/scripts/gpu_pdl_variants.py --ops "$P0OPS" 2>&1 | grep -v -e USDT -e _warn_once | tee "$OUT/p0var.log" | tail -40 ;;
    p0ops) timeout 200 python3 phase0_prototype/scripts/gpu_gemv_ops.py --out "$P0OPS" 2>&1 | grep -v -e USDT -e _warn_once | tee "$OUT/p0ops.log" | tail -70 ;;
    p4diag) timeout 240 python3 -m phase4_scheduler.scripts.gpu_step_timing --quick 2>&1 | grep -v -e USDT -e _warn_once | tee "$OUT/p4diag.log" | tail -60 ;;
    p5sweep) timeout 300 python3 -m phase5_quantization.scripts.gpu_gemv_sweep ${SWEEP_ARGS:---quick} --out "$OUT/sweep.json" > "$OUT/p5sweep.log" 2>&1; tail -40 "$OUT/p5sweep.log"; cp phase5_quantization/kernels/tuned/*.json "$OUT/" 2>/dev/null ;;
    p5step) timeout 240 python3 -m phase5_quantization.scripts.gpu_int4_step 2>&1 | grep -v -e USDT -e _warn_once | tee "$OUT/p5step.log" | tail -40 ;;
    p5ncu) timeout 150 ncu --clock-control none --kernel-name regex:_row --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats python3 -m phase5_quantization.scripts.gpu_int4_step --ncu > "$OUT/p5ncu.log" 2>&1; grep -E "ncu:|_row|Duration|Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Stall|Block Limit|Waves" "$OUT/p5ncu.log" | head -150 ;;
    p5ncu16) timeout 150 ncu --clock-control none --kernel-name 'regex:_row_mma|_wgmma' --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" python3 -m phase5_quantization.scripts.gpu_int4_step --ncu-m16 > "$OUT/p5ncu16.log" 2>&1; grep -E "ncu:|_row|Duration|DRAM Throughput|Registers|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Stall|Waves|Grid Size|issue_stalled" "$OUT/p5ncu16.log" | awk '$NF+0 > 0.3 || !/issue_stalled/' | head -150 ;;
    bs1) timeout 200 python3 -m shared.scripts.gpu_bs1 2>&1 | grep -v -e USDT -e _warn_once | tee "$OUT/bs1.log" | tail -12 ;;
    *) echo "unknown job $job" ;;
  esac
done
