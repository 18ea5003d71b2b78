#!/usr/bin/env bash
# The device run that proves the cupy backend, in one command from the repository root:
#
#     bash benchmarks/gpu_check.sh              # on a machine with a CUDA GPU, CuPy and PyTorch
#     GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # anywhere: the report's plumbing, GPU steps skipped
#
# 1. the machine: GPU name and driver (nvidia-smi), Python, numpy, CuPy (CUDA runtime and driver
#    versions), PyTorch (CUDA, cuDNN);
# 2. `python3 -m pytest -m gpu -q`: every op against the numpy reference forward and backward
#    (tests/test_conformance.py), ResNet-18 eval against the numpy backend and PyTorch CUDA, the
#    TF32/bf16 modes, training steps, the compiled model and its CUDA graph (tests/test_gpu.py);
#    hypothesis runs derandomized (profile "ci") so a second run replays the same examples;
# 3. `python3 -m benchmarks.gpu_bench`: minicnn against PyTorch on the same GPU, in the same run
#    (as a module: run as a file, its folder would come first on sys.path and benchmarks/profile.py
#    would shadow the standard library's profile, which PyTorch's optimizers import).
#
# Writes gpu_report.md to $OUT when OUT is set (with the full logs beside it: gpu_pytest_models.log,
# gpu_pytest_ops.log, gpu_bench.log), else to the current folder. Installs nothing. Sets nothing beyond its own
# commands: PYTHONPATH=. (the repository is used in place, not pip-installed), HYPOTHESIS_PROFILE
# and CUPY_CACHE_DIR (a temporary folder, removed at the end) are given to the commands it runs.
# Time limits (below): the model tests, the op tests and the benchmarks each stop at their own
# (under 6.5 minutes together, kernel compilation included); a step stopped at its limit is reported.
# The exit status is the tests' (0: all passed); a dry run exits 0 when the report was written.
set -u

TESTS_MODELS_LIMIT_S=90
TESTS_OPS_LIMIT_S=160
PER_TEST_LIMIT_S=100
BENCH_LIMIT_S=120
BENCH_BUDGET_S=95

DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (the only one is --dry-run)" >&2; exit 2 ;;
  esac
done
if [ "$DRY_RUN" != "0" ] && [ "$DRY_RUN" != "1" ]; then
  echo "gpu_check.sh: GPU_CHECK_DRY_RUN must be 0 or 1, got '$DRY_RUN'" >&2
  exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
DEST=${OUT:-.}
mkdir -p "$DEST" || { echo "gpu_check.sh: cannot create the report folder '$DEST'" >&2; exit 2; }
DEST=$(cd "$DEST" && pwd)
REPORT="$DEST/gpu_report.md"
WORK=$(mktemp -d) || exit 2
trap 'rm -rf "$WORK"' EXIT
PY=python3
# CuPy's compiled-kernel cache lives in the run's own folder (the tests compile, the benchmarks
# reuse), not in the home directory
CACHE="$WORK/cupy_cache"
run_py() { PYTHONPATH="$ROOT" HYPOTHESIS_PROFILE=ci CUPY_CACHE_DIR="$CACHE" "$PY" "$@"; }
START=$(date +%s)

# -- 1. the machine -----------------------------------------------------------------------------------
{
  echo "## Machine"
  echo
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 \
      | sed 's/^/- GPU (nvidia-smi): /'
  else
    echo "- GPU (nvidia-smi): nvidia-smi not found"
  fi
  run_py - <<'EOF' 2>&1
import platform
print(f"- Python {platform.python_version()} on {platform.machine()}")
try:
    import numpy
    print(f"- numpy {numpy.__version__}")
except Exception as e:
    print(f"- numpy: not importable ({type(e).__name__}: {e})")
try:
    import cupy
    line = f"- CuPy {cupy.__version__}"
    try:
        rt, drv = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
        line += f", CUDA runtime {rt}, driver API {drv}, {cupy.cuda.runtime.getDeviceCount()} device(s)"
    except Exception as e:
        line += f" (no usable device: {type(e).__name__}: {e})"
    print(line)
except Exception as e:
    print(f"- CuPy: not importable ({type(e).__name__}: {e})")
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"- PyTorch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"GPU visible: {cuda}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else ""))
except Exception as e:
    print(f"- PyTorch: not importable ({type(e).__name__}: {e})")
EOF
  echo "- repository: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
  echo
} >"$WORK/machine.md"

# -- 2. the GPU tests ---------------------------------------------------------------------------------
# Two runs of `pytest -m gpu -q`, each with its own time limit: the model-level checks first
# (tests/test_gpu.py), then every other gpu test (the op conformance suite and the kernel tests),
# so that a slow op suite cannot crowd out the ResNet-18 checks.
TIMEOUT_OPT=()
if run_py -c "import pytest_timeout" >/dev/null 2>&1; then  # the plugin loads itself; only its option
  TIMEOUT_OPT=("--timeout=$PER_TEST_LIMIT_S")
fi
# the op tests spend most of their time on the host (hypothesis, the numpy reference): with
# pytest-xdist present they run in OPS_WORKERS processes sharing the GPU
OPS_WORKERS=8
XDIST_OPT=()
if run_py -c "import xdist" >/dev/null 2>&1; then
  XDIST_OPT=(-n "$OPS_WORKERS")
fi

# run_tests NAME LIMIT_S PYTEST_ARGS...: runs pytest into $WORK/pytest_NAME.log, appends its
# section to $WORK/tests.md, and leaves its exit status in RC
run_tests() {
  local name=$1 limit=$2 t0 t1 log
  shift 2
  log="$WORK/pytest_$name.log"
  t0=$(date +%s)
  if [ "$DRY_RUN" = "1" ]; then  # collect only: the GPU tests are listed, none runs
    run_py -m pytest -p no:cacheprovider -m gpu -q --co "$@" >"$log" 2>&1
  else
    timeout --kill-after=10 "$limit" env PYTHONPATH="$ROOT" HYPOTHESIS_PROFILE=ci CUPY_CACHE_DIR="$CACHE" \
      PYTHONUNBUFFERED=1 "$PY" -m pytest -p no:cacheprovider -m gpu -q -rfE --tb=short --continue-on-collection-errors \
      ${TIMEOUT_OPT[@]+"${TIMEOUT_OPT[@]}"} "$@" >"$log" 2>&1
  fi
  RC=$?
  t1=$(date +%s)
  {
    echo "### \`python3 -m pytest -m gpu -q $*\`"
    echo
    if [ "$DRY_RUN" = "1" ]; then
      echo "Dry run: collected, not run."
    else
      echo "$((t1 - t0)) s, exit status $RC."
    fi
    if [ "$RC" = "124" ] || [ "$RC" = "137" ]; then
      echo
      echo "**Stopped at the ${limit} s limit**: what had run by then is in the log's last lines below."
    fi
    echo
    echo '```text'
    grep -E '([0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|tests? collected))|no tests ran|^ERROR|Timeout' \
      "$log" | tail -n 5
    echo '```'
    if grep -qE '^=+ (FAILURES|ERRORS) =+$' "$log"; then
      echo
      echo "Failures (short tracebacks):"
      echo
      echo '```text'
      awk '/^=+ (FAILURES|ERRORS) =+$/ {on=1} on' "$log" | head -n 300
      echo '```'
    elif [ "$RC" != "0" ]; then
      echo
      echo "Last lines of the log:"
      echo
      echo '```text'
      tail -n 40 "$log"
      echo '```'
    fi
    echo
  } >>"$WORK/tests.md"
}

{
  echo "## Tests"
  echo
} >"$WORK/tests.md"
run_tests models "$TESTS_MODELS_LIMIT_S" tests/test_gpu.py
MODELS_RC=$RC
if [ "$DRY_RUN" = "1" ]; then
  OPS_ARGS=(tests/test_conformance.py)  # collecting the whole suite takes long; one file shows the plumbing
else
  OPS_ARGS=(${XDIST_OPT[@]+"${XDIST_OPT[@]}"} tests --ignore=tests/test_gpu.py)
fi
run_tests ops "$TESTS_OPS_LIMIT_S" "${OPS_ARGS[@]}"
OPS_RC=$RC
TEST_RC=$MODELS_RC
[ "$TEST_RC" = "0" ] && TEST_RC=$OPS_RC
# pytest's 5 (nothing collected) is a failure here: the gpu tests must exist
[ "$DRY_RUN" = "0" ] && [ "$TEST_RC" = "5" ] && TEST_RC=1

# -- 3. the benchmarks --------------------------------------------------------------------------------
BENCH_ARGS=(--budget-s "$BENCH_BUDGET_S" --out "$WORK/bench.md")
[ "$DRY_RUN" = "1" ] && BENCH_ARGS+=(--dry-run)
timeout --kill-after=10 "$BENCH_LIMIT_S" env PYTHONPATH="$ROOT" CUPY_CACHE_DIR="$CACHE" PYTHONUNBUFFERED=1 \
  "$PY" -m benchmarks.gpu_bench "${BENCH_ARGS[@]}" >"$WORK/bench.out" 2>"$WORK/bench.log"
BENCH_RC=$?
END=$(date +%s)
{
  echo "## Benchmarks"
  echo
  echo "\`python3 -m benchmarks.gpu_bench\` (exit status $BENCH_RC; how each row is validated and timed: the script's docstring)."
  if [ "$BENCH_RC" = "124" ] || [ "$BENCH_RC" = "137" ]; then
    echo
    echo "**Stopped at the ${BENCH_LIMIT_S} s limit**."
  fi
  echo
  if [ -s "$WORK/bench.md" ]; then
    cat "$WORK/bench.md"
  else
    echo "No table was written."
  fi
  if [ "$BENCH_RC" != "0" ] || grep -q "error: " "$WORK/bench.md" 2>/dev/null; then
    echo
    echo "### Last lines of the benchmark log"
    echo
    echo '```text'
    tail -n 60 "$WORK/bench.log"
    echo '```'
  fi
  echo
} >"$WORK/bench_section.md"

# -- the report ---------------------------------------------------------------------------------------
{
  echo "# GPU check: the cupy backend"
  echo
  if [ "$DRY_RUN" = "1" ]; then
    echo "**Dry run**: the report's plumbing only; not run on a GPU, and no number below is a measurement."
  else
    echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') by \`bash benchmarks/gpu_check.sh\`, $((END - START)) s in all."
  fi
  echo
  cat "$WORK/machine.md" "$WORK/tests.md" "$WORK/bench_section.md"
} >"$REPORT"
if [ -n "${OUT:-}" ]; then  # the full logs come back beside the report
  cp "$WORK/pytest_models.log" "$DEST/gpu_pytest_models.log"
  cp "$WORK/pytest_ops.log" "$DEST/gpu_pytest_ops.log"
  cp "$WORK/bench.log" "$DEST/gpu_bench.log"
fi
echo "gpu_check.sh: report written to $REPORT (tests exit $MODELS_RC and $OPS_RC, benchmarks exit $BENCH_RC, $((END - START)) s)"

if [ "$DRY_RUN" = "1" ]; then
  [ -s "$REPORT" ] && [ "$BENCH_RC" = "0" ] && exit 0
  exit 1
fi
exit "$TEST_RC"
