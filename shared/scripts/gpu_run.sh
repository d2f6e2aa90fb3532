#!/usr/bin/env bash
# The engine's E.1 run on one GPU (the lead's device call), from the repository root:
#
#   PYTHONPATH=$PWD bash shared/scripts/gpu_run.sh            # ~4–5 min on an H100
#   RUN_TESTS=1 PYTHONPATH=$PWD bash shared/scripts/gpu_run.sh  # + the GPU tests first (~1 min more)
#
# Runs `python -m module0_profiling.check engine --size full` (random:tinyllama, bf16): every row of the
# comparison table, HF transformers peers included, in one process; writes reports/shared/<device>.md
# (+ .json, .roofline.png, .engine.png). Logs and a copy of the report go under $OUT (default ./gpu_out).
# The check is bounded by CHECK_TIMEOUT seconds (default 340) so the whole call stays under 6 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-$PWD}
PY=${PYTHON:-python3}
log() { echo "[gpu_run $(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_run.log"; }

log "device: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)"
$PY - <<'PY' 2>&1 | tee -a "$OUT/gpu_run.log"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "gpus", torch.cuda.device_count())
for m in ("triton", "transformers", "matplotlib", "jinja2", "fastapi", "titaninfer_kvcache"):
    try:
        mod = importlib.import_module(m)
        print(f"{m}: {getattr(mod, '__version__', 'ok')}")
    except Exception as e:  # noqa: BLE001 - a report of what is there, not a requirement
        print(f"{m}: missing ({type(e).__name__})")
PY

if [ "${RUN_TESTS:-0}" = "1" ]; then
  log "GPU tests: shared/tests/test_engine_gpu.py"
  timeout 150 $PY -m pytest -q -p no:cacheprovider shared/tests/test_engine_gpu.py > "$OUT/gpu_tests.log" 2>&1
  log "GPU tests exit $? (tail below)"; tail -5 "$OUT/gpu_tests.log" | tee -a "$OUT/gpu_run.log"
fi

log "check engine --size full (timeout ${CHECK_TIMEOUT:-340} s)"
timeout "${CHECK_TIMEOUT:-340}" $PY -m module0_profiling.check engine --size full > "$OUT/check_engine.log" 2>&1
rc=$?
log "check exit $rc (0 = E.1 passes, 1 = a target failed, 124 = timed out)"
grep -E '^\[engine bench|^\[check\]|^E\.1|^target|^-' "$OUT/check_engine.log" | tee -a "$OUT/gpu_run.log"
mkdir -p "$OUT/reports"
cp -r reports/shared "$OUT/reports/" 2>/dev/null && log "report copied to $OUT/reports/shared"
exit $rc
