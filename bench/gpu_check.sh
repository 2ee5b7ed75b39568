#!/usr/bin/env bash
# The one script to run when a GPU is lent, or `--dry-run` on a CPU (CI).
#
#   bash bench/gpu_check.sh [--dry-run]
#
# On the device tool (repo root; $OUT comes back, at most 8 files: this script writes 8 at most;
# data/ is git-ignored, so carry it):
#   run(command="bash bench/gpu_check.sh", carry=["data"], timeout_s=600)
# then copy $OUT/gpu_check.md to bench/results/gpu_<device>.md (the name is in its first lines).
#
# It ends within GPU_CHECK_BUDGET seconds (default 500). Each step runs under its own cap or the
# time left, whichever is less; a step that would get less than MIN_STEP seconds is SKIP. The
# steps, most needed first in case the run is cut short:
#    1. versions: device, driver, CUDA, CuPy, PyTorch, and the MFU peaks for this device's name;
#    2. python -m minigrad.kernels: every kernel in every form, as PTX and as CuPy's sm_90 cubin;
#    3. the kernel tests on the GPU: each kernel's float32 and float16 forms against the composite ops,
#       the tensor-core attention (tests/test_flash_attention_gpu.py) against its twin and the
#       composite op, and F.causal_self_attention in float16, TF32 and float32 with dropout;
#    4. bench.train, 124M at B=16 T=1024, float16: minigrad beside PyTorch eager, CUDA events, the
#       GPU time of every minigrad Function, torch.profiler's list of each side's kernels;
#    5. the headline command: tasks.pretrain --backend cupy --dtype float16, B=16 T=1024, on
#       tinyshakespeare, 12 steps, its default --dropout 0.1 (drawn inside the fused kernels);
#       tokens/s from its metrics.jsonl (bench/headline.py);
#    6. bench.train tf32, 7. float32, 8. float32 with MINIGRAD_FUSED=0 (what the kernels buy);
#    9. bench.resume_smoke: tasks.pretrain stopped by SIGTERM, resumed, the losses bit-identical;
#   10. bench.resources: every kernel's registers, spills, shared memory and occupancy on sm_90
#       (NVRTC, the same on any machine: last among the steps that matter, as it needs no GPU);
#   11. the other GPU tests (every backend-parametrised test, on cupy).
# $OUT/gpu_check.md is rewritten whole (write, then rename) after every step, so wherever the run
# is cut it holds what was done (the step in flight marked "running"); each result file is in
# $OUT the moment it exists (written atomically); every command's output is in $OUT/gpu_check.log.
#
# --dry-run: the same steps on the CPU at tiny sizes (minigrad on the stand-in device, so the
# fused kernels' launchers run; tf32, a GPU mode, as float32), then the script twice more into
# $OUT/cut/, cut short: by a budget too small for its steps, and by SIGKILL in the middle of a
# step. Both must leave a readable report. CI runs it; it must pass.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0 NESTED=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --nested) NESTED=1 ;;  # a cut run inside a dry run: no cut runs of its own
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
REPORT=$OUT/gpu_check.md
LOG=$OUT/gpu_check.log
WORK=$(mktemp -d)  # run folders and the report's pieces: nothing here comes back
trap 'rm -rf "$WORK"' EXIT
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-500}
MIN_STEP=${GPU_CHECK_MIN_STEP:-15}
RESERVE=3  # seconds kept for the last report
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MINIGRAD_OFFLINE=1
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/data/tiktoken_cache}
START=$(date +%s)
FAILED=0
ROWS=()   # the steps table, one markdown row each
FILES=()  # result files, in the report's order
: >"$LOG"

if [ "$DRY" = 1 ]; then
  BACKEND=standin SIZE=tiny
  TRAIN=(--backend standin --size tiny --vocab-size 1000 --batch-size 2 --context 32 --steps 2)
  HEADLINE=(--backend standin --dataset tinyshakespeare --n-layer 2 --n-head 2 --n-embd 64 --batch-size 2
            --context 32 --max-steps 6 --eval-every 3)
  KERNELS=(minigrad/kernels/gelu.cu)
  RESOURCES=(minigrad/kernels/gelu.cu minigrad/kernels/bias_residual.cu)
  KERNEL_TESTS=(-k "bias_residual or embedding or causal_self_attention" tests/test_kernels.py
                tests/test_flash_attention_gpu.py)
  OTHER_TESTS=(-k "standin and (layer_norm or gelu)" tests/test_gradcheck_ops.py)
  TF32=float32 TF32_NAME="tf32 (run as float32: TF32 is a GPU mode)"
  SMOKE_STEPS=8
else
  BACKEND=cupy SIZE=124M
  TRAIN=(--backend cupy --size 124M --batch-size 16 --context 1024 --steps 6)
  HEADLINE=(--backend cupy --dataset tinyshakespeare --batch-size 16 --context 1024 --max-steps 12 --eval-every 4)
  KERNELS=()
  RESOURCES=()
  KERNEL_TESTS=(-k cuda tests/test_kernels.py tests/test_flash_attention_gpu.py)
  OTHER_TESTS=(-k cuda tests/test_engine.py tests/test_gradcheck_ops.py tests/test_nn_optim.py tests/test_debug_mode.py
               tests/test_generate.py tests/test_parity_torch.py tests/test_weights.py)
  TF32=tf32 TF32_NAME=tf32
  SMOKE_STEPS=12
fi
# tasks.pretrain's default --dropout 0.1, as users run it: every mask is drawn inside a fused kernel
HEADLINE+=(--dtype float16 --eval-batches 2 --sample-tokens 0 --no-progress)

elapsed() { echo $(( $(date +%s) - START )); }

write_report() {  # the whole report into a temporary file, then renamed over the old one
  {
    cat "$WORK/header.md"
    echo "## Steps"
    echo
    echo "| step | result | |"
    echo "|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "$(elapsed) s of the ${BUDGET} s budget used so far; results follow in the order of the steps."
    for f in "${FILES[@]}"; do
      [ -f "$f" ] || continue
      echo
      echo "---"
      echo
      sed 's/^# /## /' "$f"  # each result one heading level down
    done
  } >"$REPORT.tmp" && mv "$REPORT.tmp" "$REPORT"
}

step() {  # step NAME CAP RESULT_FILE CMD...: run under min(CAP, time left), record, rewrite the report
  local name=$1 cap=$2 result=$3; shift 3
  local left=$(( BUDGET - RESERVE - $(elapsed) ))
  if [ "$left" -lt "$MIN_STEP" ]; then
    ROWS+=("| $name | SKIP | ${left} s of the ${BUDGET} s budget left: under ${MIN_STEP} s |")
    write_report
    return 0
  fi
  local limit=$(( cap < left ? cap : left ))
  ROWS+=("| $name | running (cut here if the report ends so) | started at $(elapsed) s, limit ${limit} s |")
  write_report
  echo "=== $name (limit ${limit} s, at $(elapsed) s): $*" >>"$LOG"
  local t0 rc took why
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  took=$(( $(date +%s) - t0 ))
  unset 'ROWS[-1]'
  if [ "$rc" = 0 ]; then
    ROWS+=("| $name | PASS | ${took} s |")
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    why=$([ "$limit" -lt "$cap" ] && echo "cut by the budget" || echo "timed out")
    ROWS+=("| $name | FAIL | $why after ${limit} s |")
    FAILED=1
  else
    ROWS+=("| $name | FAIL | exit $rc after ${took} s (see gpu_check.log) |")
    FAILED=1
  fi
  [ -n "$result" ] && [ -f "$result" ] && FILES+=("$result")
  write_report
}

versions() {  # the report's header: what ran, on what
  echo "# GPU check ($([ "$DRY" = 1 ] && echo "dry run on the CPU: minigrad on the stand-in device" || echo "$BACKEND"))"
  echo
  echo "\`bash bench/gpu_check.sh $*\` at $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget ${BUDGET} s."
  echo
  echo '```'
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 || true
  else
    echo "nvidia-smi: not found (no NVIDIA driver here)"
  fi
  timeout 60 "$PY" - <<'PYEOF' 2>&1
import platform, numpy
print("python", platform.python_version(), "| numpy", numpy.__version__)
name = None
try:
    import cupy
    print("cupy", cupy.__version__, end="")
    try:
        rt = cupy.cuda.runtime
        props = rt.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(" | CUDA runtime", rt.runtimeGetVersion(), "| driver", rt.driverGetVersion(), "|", name,
              f"| compute capability {props['major']}.{props['minor']}, {props['multiProcessorCount']} SMs,",
              f"{props['totalGlobalMem'] / 2**30:.0f} GiB")
        from cupy.cuda import nccl
        print("NCCL available to CuPy:", nccl.available)
    except Exception as e:
        print(" | no GPU:", type(e).__name__)
except ImportError:
    print("cupy: not installed")
try:
    import torch
    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| GPU", torch.cuda.is_available())
except ImportError:
    print("torch: not installed")
if name:
    from bench.common import peak_tflops
    peaks = {dt: peak_tflops(name, dt) for dt in ("float32", "tf32", "float16")}
    if all(peaks.values()):
        src = next(iter(peaks.values()))[1]
        print(f"MFU peaks ({src} datasheet, dense): " + ", ".join(f"{dt} {p[0]:g}" for dt, p in peaks.items()) + " TFLOP/s")
    else:
        print(f"MFU peaks: none known for {name!r} (bench.train then reports no MFU)")
PYEOF
  echo '```'
  echo
}

check_cut() {  # a dry run's check: a run cut short still leaves a readable report in its $OUT
  local dir=$OUT/cut how=$1 pid sid p
  rm -rf "$dir"
  if [ "$how" = budget ]; then  # its steps find the budget spent, or are cut by it
    OUT=$dir GPU_CHECK_BUDGET=20 GPU_CHECK_MIN_STEP=5 bash bench/gpu_check.sh --dry-run --nested >/dev/null 2>&1
  else  # killed outright in the middle of a step, as a lent machine whose time runs out is:
    # every process of the run's session, by its id (the steps run in process groups of their own)
    OUT=$dir setsid bash bench/gpu_check.sh --dry-run --nested >/dev/null 2>&1 &
    pid=$!
    sleep 25
    sid=$(ps -o sid= -p "$pid" | tr -d ' ')
    for p in $(ps -o pid= -s "${sid:-$pid}"); do kill -KILL "$p" 2>/dev/null; done
    wait "$pid" 2>/dev/null
  fi
  grep -q "^# GPU check" "$dir/gpu_check.md" && grep -q "^| step | result |" "$dir/gpu_check.md" \
    && grep -q "^| versions" "$dir/gpu_check.md" || { echo "no readable report after a cut ($how)"; return 1; }
  if [ "$how" = budget ]; then
    grep -qE "^\| .* \| (SKIP|FAIL) \| .*(budget|cut)" "$dir/gpu_check.md" || { echo "the budget's cut is not reported"; return 1; }
  else
    grep -q "| running (cut here" "$dir/gpu_check.md" || { echo "the step in flight is not marked"; return 1; }
  fi
  echo "a run cut by its $how leaves a readable report:"
  cat "$dir/gpu_check.md"
}

cut_step() {  # cut_step NAME HOW: a dry run's cut, recorded as a step
  local t0 rc
  t0=$(date +%s)
  echo "=== $1" >>"$LOG"
  check_cut "$2" >>"$LOG" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then ROWS+=("| $1 | PASS | $(( $(date +%s) - t0 )) s |"); else ROWS+=("| $1 | FAIL | see gpu_check.log |"); FAILED=1; fi
  write_report
}

versions "$@" >"$WORK/header.md"
ROWS+=("| versions | PASS | $(elapsed) s |")
write_report
cat "$WORK/header.md"

step "NVRTC: every kernel, every form, PTX and CuPy's sm_90 cubin" 120 "" "$PY" -m minigrad.kernels "${KERNELS[@]}"
step "kernel tests on $BACKEND (float32 and float16 forms, the tensor-core attention)" 150 "" \
  "$PY" -m pytest -q -p no:cacheprovider --backend "$BACKEND" "${KERNEL_TESTS[@]}"
step "bench.train $SIZE float16" 150 "$OUT/train_float16.md" \
  "$PY" -m bench.train "${TRAIN[@]}" --dtype float16 --out "$OUT/train_float16.md"
step "headline: tasks.pretrain float16" 150 "$OUT/headline.md" \
  "$PY" -m bench.headline --out "$OUT/headline.md" -- "${HEADLINE[@]}"
step "bench.train $SIZE $TF32_NAME" 120 "$OUT/train_tf32.md" \
  "$PY" -m bench.train "${TRAIN[@]}" --dtype "$TF32" --out "$OUT/train_tf32.md"
step "bench.train $SIZE float32" 120 "$OUT/train_float32.md" \
  "$PY" -m bench.train "${TRAIN[@]}" --dtype float32 --out "$OUT/train_float32.md"
step "bench.train $SIZE float32, MINIGRAD_FUSED=0" 120 "$OUT/train_float32_unfused.md" \
  env MINIGRAD_FUSED=0 "$PY" -m bench.train "${TRAIN[@]}" --dtype float32 --no-profile --out "$OUT/train_float32_unfused.md"
if [ -f data/the-verdict.txt ]; then
  step "tasks.pretrain SIGTERM + --resume" 120 "$OUT/resume.md" \
    "$PY" -m bench.resume_smoke --backend "$BACKEND" --steps "$SMOKE_STEPS" --out "$OUT/resume.md"
else
  ROWS+=("| tasks.pretrain SIGTERM + --resume | SKIP | data/the-verdict.txt missing: carry data/ |")
fi
# its table goes into the report alone ($OUT brings back 8 files at most, and this needs no GPU to redo)
step "kernel resources on sm_90 (bench.resources)" 120 "$WORK/resources.md" \
  "$PY" -m bench.resources --out "$WORK/resources.md" "${RESOURCES[@]}"
step "the other tests on $BACKEND" 200 "" "$PY" -m pytest -q -p no:cacheprovider --backend "$BACKEND" "${OTHER_TESTS[@]}"
if [ "$DRY" = 1 ] && [ "$NESTED" = 0 ]; then
  cut_step "simulated cut: a budget too small for the steps" budget
  cut_step "simulated cut: SIGKILL in the middle of a step" kill
fi
write_report
echo "report: $REPORT (log: $LOG)"
exit "$FAILED"
