#!/usr/bin/env bash
# The one script to run when a GPU is lent (about 8 minutes), or `--dry-run` on a CPU (CI).
#
#   bash bench/gpu_check.sh [--dry-run]
#
# On the device tool (repo root, $OUT comes back; data/ is git-ignored, so carry it):
#   run(command="bash bench/gpu_check.sh", carry=["data"], timeout_s=600)
# then copy $OUT/gpu_check.md to bench/results/gpu_<device>.md and commit it.
#
# Steps, each under its own timeout, each recorded PASS/FAIL/SKIP in one report
# ($OUT/gpu_check.md; every command's output in $OUT/gpu_check.log):
#   1. versions: device, driver, CUDA, CuPy, PyTorch;
#   2. python -m minigrad.kernels (NVRTC compiles every kernel);
#   3. pytest --backend cupy on the backend tests, the kernels-vs-reference tests among them;
#   4. bench.train: 124M at B=8 and 16, T=1024, in float32/tf32/float16 through bench.train's
#      --dtype (float32 only, with a note, where bench.train has no --dtype), minigrad beside
#      PyTorch eager in the same run, CUDA-event timing, tokens/s, MFU, peak memory;
#   5. bench.resume_smoke: tasks.pretrain stopped by SIGTERM, resumed, losses bit-identical;
#   6. bench.train 355M at B=8, T=1024 (float32).
# Past GPU_CHECK_BUDGET seconds (default 560) the remaining steps are reported SKIP.
# --dry-run: the same steps on the NumPy backend at tiny sizes, for CI; it must pass.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
REPORT=$OUT/gpu_check.md
LOG=$OUT/gpu_check.log
WORK=$(mktemp -d)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-560}   # seconds; later steps are skipped once it is spent
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MINIGRAD_OFFLINE=1
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/data/tiktoken_cache}
START=$(date +%s)
FAILED=0
: >"$LOG"

if [ "$DRY" = 1 ]; then
  BACKEND=numpy; PYTEST_BACKEND=numpy
  SIZE_ARGS=(--size tiny --context 32 --steps 2 --no-profile); RUNS=(2:float32)  # with --dtype float32 where bench.train has the flag
  BIG_ARGS=(--size small --batch-size 1 --context 32 --steps 2 --no-profile)
  SMOKE_STEPS=8
else
  BACKEND=cupy; PYTEST_BACKEND=cupy
  SIZE_ARGS=(--size 124M --context 1024 --steps 5 --no-profile)
  # batch:dtype, the headline first (fp16 at 16K tokens a step), in case the budget runs out
  RUNS=(16:float16 8:float32 16:float32 8:float16 8:tf32 16:tf32)
  BIG_ARGS=(--size 355M --batch-size 8 --context 1024 --steps 4 --no-profile)
  SMOKE_STEPS=12
fi
# H200 datasheet peaks (dense), for MFU: FP32 67, TF32 tensor 494, FP16 tensor 989 TFLOP/s
declare -A PEAK=([float32]=67 [tf32]=494 [float16]=989)

say() { echo "$*" | tee -a "$REPORT"; }
step() {  # step NAME TIMEOUT CMD...: run, log, and record the outcome
  local name=$1 limit=$2; shift 2
  local now=$(( $(date +%s) - START ))
  if [ "$now" -ge "$BUDGET" ]; then
    say "| $name | SKIP | time budget of ${BUDGET} s spent |"; return 0
  fi
  echo "=== $name: $*" >>"$LOG"
  local t0=$(date +%s) rc
  timeout "$limit" "$@" >>"$LOG" 2>&1; rc=$?
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ]; then say "| $name | PASS | ${took} s |"
  elif [ "$rc" = 124 ]; then say "| $name | FAIL | timed out after ${limit} s |"; FAILED=1
  else say "| $name | FAIL | exit $rc after ${took} s (see gpu_check.log) |"; FAILED=1
  fi
}

{
  echo "# GPU check ($([ "$DRY" = 1 ] && echo "dry run on the CPU, NumPy backend" || echo "$BACKEND"))"
  echo
  echo "\`bash bench/gpu_check.sh $*\` at $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo
  echo "## Versions"
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  else
    echo "nvidia-smi: not found (no NVIDIA driver here)"
  fi
  "$PY" - <<'PYEOF' 2>&1
import platform, numpy
print("python", platform.python_version(), "| numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, end="")
    try:
        print(" | CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(), "| driver", cupy.cuda.runtime.driverGetVersion())
    except Exception as e:
        print(" | no GPU:", type(e).__name__)
except ImportError:
    print("cupy: not installed")
try:
    import torch
    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| GPU", torch.cuda.is_available())
except ImportError:
    print("torch: not installed")
PYEOF
  echo '```'
  echo
  echo "## Steps"
  echo
  echo "| step | result | |"
  echo "|---|---|---|"
} >>"$REPORT"
cat "$REPORT"

step "NVRTC compiles every kernel" 120 "$PY" -m minigrad.kernels
if [ "$DRY" = 1 ]; then  # CI runs the whole suite anyway: here only what this script adds
  TESTS=(tests/test_kernels.py tests/test_kernel_twins.py)
else  # every test file with backend-parametrised tests, and the kernels against their references
  TESTS=(tests/test_kernels.py tests/test_engine.py tests/test_gradcheck_ops.py tests/test_nn_optim.py
         tests/test_generate.py tests/test_parity_torch.py tests/test_weights.py)
fi
step "pytest --backend $PYTEST_BACKEND (backend + kernel tests)" 200 "$PY" -m pytest -q -p no:cacheprovider \
  --backend "$PYTEST_BACKEND" "${TESTS[@]}"

DTYPE_NOTE=""
if ! "$PY" -m bench.train --help 2>/dev/null | grep -q -- "--dtype"; then
  DTYPE_NOTE="bench.train has no --dtype here: only float32 was measured (tf32 and float16 need it)."
fi
for run in "${RUNS[@]}"; do
  B=${run%%:*} dt=${run#*:}
  if [ -n "$DTYPE_NOTE" ] && [ "$dt" != float32 ]; then
    say "| bench.train ${SIZE_ARGS[1]} B=$B $dt | SKIP | no --dtype in bench.train |"; continue
  fi
  args=("${SIZE_ARGS[@]}" --backend "$BACKEND" --batch-size "$B" --out "$WORK/train_B${B}_${dt}.md")
  [ -n "$DTYPE_NOTE" ] || args+=(--dtype "$dt")
  [ "$DRY" = 1 ] || args+=(--peak-tflops "${PEAK[$dt]}")
  step "bench.train ${SIZE_ARGS[1]} B=$B $dt" 120 "$PY" -m bench.train "${args[@]}"
done
if [ -f data/the-verdict.txt ] || [ -f "${MINIGRAD_DATA_DIR:-data}/the-verdict.txt" ]; then
  step "tasks.pretrain SIGTERM + --resume" 240 "$PY" -m bench.resume_smoke --backend "$BACKEND" \
    --steps "$SMOKE_STEPS" --out "$WORK/resume.md"
else
  say "| tasks.pretrain SIGTERM + --resume | SKIP | data/the-verdict.txt missing: carry data/ |"
fi
step "bench.train ${BIG_ARGS[1]} float32" 150 "$PY" -m bench.train "${BIG_ARGS[@]}" --backend "$BACKEND" \
  --out "$WORK/train_big.md"

{
  echo
  [ -z "$DTYPE_NOTE" ] || { echo "$DTYPE_NOTE"; echo; }
  echo "Total $(( $(date +%s) - START )) s. MFU uses datasheet peaks (FP32 67, TF32 494, FP16 989 TFLOP/s, dense)."
  for f in "$WORK"/train_*.md "$WORK"/resume.md; do
    [ -f "$f" ] || continue
    echo
    echo "---"
    echo
    sed 's/^# /## /' "$f"   # each result, one heading level down
  done
} >>"$REPORT"
rm -rf "$WORK"
echo "report: $REPORT (log: $LOG)"
if [ "$DRY" = 0 ] && [ -d bench/results ]; then
  name=$("$PY" -c "import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); n = p['name']; n = n.decode() if isinstance(n, bytes) else n; print(n.replace('NVIDIA ', '').replace(' ', '_'))" 2>/dev/null || echo unknown)
  cp "$REPORT" "bench/results/gpu_${name}.md" && echo "copied to bench/results/gpu_${name}.md"
fi
exit "$FAILED"
