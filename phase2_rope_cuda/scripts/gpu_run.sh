#!/usr/bin/env bash
# One device call for phase 2: GPU tests, then the check (report + table), logs under $OUT.
# Usage on the device machine, from the repo root:  bash phase2_rope_cuda/scripts/gpu_run.sh [full|small]
# Carried wheels (.whl/, .whlA/, .whlB/: liger-kernel, FlashInfer and its tvm-ffi; NOTES.md lists them) are
# installed by module0's device_site.sh; a peer that does not import is SKIP with the reason.
set -u
SIZE=${1:-full}
OUT=${OUT:-/tmp/p2out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
source module0_profiling/scripts/device_site.sh
{
  nvidia-smi --query-gpu=name,compute_mode,clocks.sm,clocks.max.sm,clocks.mem --format=csv
  echo "nvcc: $(command -v nvcc || echo absent)  ncu: $(command -v ncu || echo absent)"
  python3 -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cupy', cupy.__version__)"
  python3 -c "import liger_kernel.transformers.rope as r; print('liger ok')" 2>&1 | tail -1
  python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# FlashInfer JIT-builds its RoPE kernel with nvcc on first use (cache: ~/.cache/flashinfer, kept while the
# machine stays warm): build it here, outside the tests' and the check's time limits.
timeout 300 python3 -c "from phase2_rope_cuda.peers import flashinfer_peers; print(flashinfer_peers()[1] or 'flashinfer rope: built')" 2>&1 | tail -2
timeout 90 python3 -m pytest phase2_rope_cuda/tests -q -x -p no:cacheprovider > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?"; tail -5 "$OUT/pytest.log"
if command -v ncu >/dev/null; then  # the raw ncu log, for when the check's ncu table is empty
  timeout 60 ncu --clock-control none --kernel-name regex:rope_v --launch-count 3 \
    --metrics dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,gpu__time_duration.sum \
    python3 -c "from phase2_rope_cuda.bench import ncu_workload; ncu_workload('solution')" > "$OUT/ncu_raw.log" 2>&1
  echo "ncu rc=$?"; grep -v "^==PROF==" "$OUT/ncu_raw.log" | tail -25
fi
timeout ${CHECK_TIMEOUT:-200} python3 -m module0_profiling.check phase2_rope_cuda --impl solution --size "$SIZE" --out "$OUT/reports" > "$OUT/check.log" 2>&1
echo "check rc=$?"; grep -v USDT "$OUT/check.log" | tail -30
