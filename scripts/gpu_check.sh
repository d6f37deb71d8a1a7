#!/usr/bin/env bash
# The GPU proof in one command (run from the repo root on the GPU machine):
#
#   bash scripts/gpu_check.sh [--out DIR] [--dry-run] [--sweep-configs]
#
#   1. prints the environment (GPU, driver, torch, triton, CUDA) and records it;
#   2. installs kdcore with no network: the wheels in .whl/ (made here by
#      scripts/gpu_wheels.sh, carried with the tree) with --no-index --no-deps, then kdcore
#      itself editable with --no-build-isolation (torch and triton are never reinstalled);
#   3. runs the CUDA tests (scripts/pytest_cuda_only.py picks every test that needs CUDA);
#   4. runs the GPU benchmarks: benchmarks/gpu_losses.py, gpu_log_mel.py (batches 1, 8, 64 x
#      10 s; ieee and tf32) and gpu_e2e.py, into DIR/<gpu-name>.json;
#   5. prints one compact table last (benchmarks/gpu_report.py).
#
# Every phase runs under `timeout` with its own cap (CAP_* below, seconds; the benchmarks also
# get a softer budget so they stop starting new cases in time), so the table always prints;
# the caps (with about 15 s for the environment and the table) add up to 7.6 minutes. DIR
# defaults to benchmarks/results; when the variable OUT names a folder (the GPU machine's), the
# JSON, log, JUnit report and table are also copied there. Exit status: 0 when every phase
# passed, else 1.
#
# --dry-run: the same on the CPU with tiny shapes and the Triton interpreter, skipping the
# install, the CUDA-only parts and the C++ build (the tests are only collected), into a
# temporary DIR unless --out is given; under a minute. tests/test_gpu_check.py runs it.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

COMMAND="bash scripts/gpu_check.sh${*:+ $*}"
DRY=0
OUTDIR=""
SWEEP=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUTDIR="${2:?--out needs a folder}"; shift 2 ;;
        --out=*) OUTDIR="${1#--out=}"; shift ;;
        --dry-run) DRY=1; shift ;;
        --sweep-configs) SWEEP=(--sweep-configs); shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
    OUTDIR="${OUTDIR:-$(mktemp -d "${TMPDIR:-/tmp}/kdcore-gpu-check.XXXXXX")}"
    : "${CAP_TESTS:=120}" "${CAP_LOSSES:=120}" "${CAP_LOG_MEL:=90}" "${CAP_E2E:=90}"
    DRY_FLAG=(--dry-run)
else
    OUTDIR="${OUTDIR:-benchmarks/results}"
    : "${CAP_TESTS:=110}" "${CAP_LOSSES:=135}" "${CAP_LOG_MEL:=45}" "${CAP_E2E:=90}"
    DRY_FLAG=()
fi
: "${CAP_INSTALL:=60}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
STARTED=$SECONDS
FAILED=0

if [ "$DRY" = 1 ]; then
    SLUG=cpu-dry-run
else
    SLUG="$("$PY" -c 'import sys; sys.path.insert(0, "benchmarks")
import torch
from _common import device_slug
print(device_slug(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "no-cuda")')"
fi
RESULTS="$OUTDIR/$SLUG.json"
rm -f "$RESULTS"

# Runs "$@" under a cap; records its status and time in the JSON as phase $1.
phase() {
    local name="$1" cap="$2"
    shift 2
    local begin=$SECONDS rc
    echo
    echo "== phase $name (cap ${cap}s) =="
    timeout -k 10 "$cap" "$@"
    rc=$?
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "phase $name stopped at its ${cap}s cap"
    "$PY" "$ROOT/benchmarks/gpu_report.py" phase "$RESULTS" "$name" --rc "$rc" \
        --seconds "$((SECONDS - begin))" || true
    return $rc
}

# 1. environment -------------------------------------------------------------------------------
echo "== phase environment =="
if [ "$DRY" = 0 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
        --format=csv || true
fi
"$PY" "$ROOT/benchmarks/gpu_report.py" env "$RESULTS" --command "$COMMAND" "${DRY_FLAG[@]}" || FAILED=1

# 2. install, no network ---------------------------------------------------------------------------
CPP_PID=""
if [ "$DRY" = 0 ]; then
    install() {
        set -e
        if compgen -G ".whl/*.whl" >/dev/null; then
            "$PY" -m pip install -q --no-index --find-links .whl --no-deps --no-cache-dir \
                .whl/*.whl
        else
            echo "no .whl/ here (make it with scripts/gpu_wheels.sh and carry it)"
        fi
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
            || "$PY" -m pip install -q --no-index --no-deps --no-build-isolation .
        "$PY" -c "import kdcore, soundfile, soxr; print('kdcore', kdcore.__version__, 'from', kdcore.__file__)"
    }
    phase install "$CAP_INSTALL" bash -c "$(declare -f install); PY='$PY'; install" || FAILED=1
    # Record again, now that kdcore and the carried wheels (liger-kernel) are importable.
    "$PY" "$ROOT/benchmarks/gpu_report.py" env "$RESULTS" --command "$COMMAND" >/dev/null || true
    # Test collection builds kdcore's C++ CPU kernels once; start that now, in the background.
    "$PY" -c "from kdcore import _backends; _backends.cpp_ops()" >"$OUTDIR/cpp_build.log" 2>&1 &
    CPP_PID=$!
else
    echo
    echo "== phase install: skipped (dry run) =="
fi

# 3. CUDA tests ------------------------------------------------------------------------------------
mapfile -t TEST_FILES < <(grep -liE "cuda|gpu" tests/test_*.py | grep -v "test_gpu_check.py")
JUNIT="$OUTDIR/cuda_tests.xml"
PYTEST=(-q -p pytest_cuda_only --continue-on-collection-errors -p no:cacheprovider
        --junitxml="$JUNIT")
TEST_ENV=(PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}")
if [ "$DRY" = 1 ]; then
    # No C++ build in a dry run: a failing compiler makes kdcore fall back at once.
    PYTEST+=(--collect-only)
    TEST_ENV+=(CXX=false TORCH_EXTENSIONS_DIR="$OUTDIR/no-cpp-build")
else
    "$PY" -c "import xdist" 2>/dev/null && PYTEST+=(-n 4)
    "$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout=90)
    # pytest-timeout >= 2.3 stops the session in time to still write the JUnit report.
    "$PY" -c "import inspect, pytest_timeout, sys
sys.exit('session_timeout' not in inspect.getsource(pytest_timeout))" 2>/dev/null \
        && PYTEST+=(--session-timeout="$((CAP_TESTS - 20))")
fi
TEST_BEGIN=$SECONDS
phase cuda_tests "$CAP_TESTS" env "${TEST_ENV[@]}" "$PY" -m pytest "${PYTEST[@]}" \
    "${TEST_FILES[@]}" >"$OUTDIR/cuda_tests.out" 2>&1
TEST_RC=$?
grep -vE "^tests/[^ ]+::" "$OUTDIR/cuda_tests.out" | tail -n 30
SELECTED=$(grep -cE "^tests/[^ ]+::" "$OUTDIR/cuda_tests.out" || true)
if [ "$DRY" = 1 ]; then
    "$PY" "$ROOT/benchmarks/gpu_report.py" tests "$RESULTS" --junit "$JUNIT" --rc "$TEST_RC" \
        --seconds "$((SECONDS - TEST_BEGIN))" --selected "$SELECTED" --collect-only
else
    "$PY" "$ROOT/benchmarks/gpu_report.py" tests "$RESULTS" --junit "$JUNIT" --rc "$TEST_RC" \
        --seconds "$((SECONDS - TEST_BEGIN))"
fi
[ $TEST_RC -eq 0 ] || [ $TEST_RC -eq 5 ] || FAILED=1  # 5: nothing selected

# 4. benchmarks ------------------------------------------------------------------------------------
cd benchmarks
phase losses "$CAP_LOSSES" "$PY" gpu_losses.py --output "$RESULTS" \
    --budget-s "$((CAP_LOSSES - 35))" "${SWEEP[@]}" "${DRY_FLAG[@]}" || FAILED=1
if [ "$DRY" = 1 ]; then BATCHES=(1); else BATCHES=(1 8 64); fi
phase log_mel "$CAP_LOG_MEL" "$PY" gpu_log_mel.py --output "$RESULTS" \
    --batches "${BATCHES[@]}" --precisions ieee tf32 --budget-s "$((CAP_LOG_MEL - 20))" \
    "${DRY_FLAG[@]}" || FAILED=1
phase e2e "$CAP_E2E" "$PY" gpu_e2e.py --output "$RESULTS" \
    --budget-s "$((CAP_E2E - 40))" "${DRY_FLAG[@]}" || FAILED=1
cd "$ROOT"
if [ -n "$CPP_PID" ]; then kill "$CPP_PID" 2>/dev/null; wait "$CPP_PID" 2>/dev/null; fi

# 5. the table, last ---------------------------------------------------------------------------------
TABLE="$OUTDIR/gpu_check_table.txt"
"$PY" "$ROOT/benchmarks/gpu_report.py" table "$RESULTS" >"$TABLE" || FAILED=1
echo
echo "results: $RESULTS; log: $LOG; total $((SECONDS - STARTED)) s; exit $FAILED"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && [ "$(cd "$OUT" && pwd)" != "$OUTDIR" ]; then
    cp "$RESULTS" "$JUNIT" "$TABLE" "$OUT"/ 2>/dev/null
    echo "copied the results, JUnit report and table to \$OUT (the log follows at exit)"
fi
echo
cat "$TABLE"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && [ "$(cd "$OUT" && pwd)" != "$OUTDIR" ]; then
    cp "$LOG" "$OUT"/ 2>/dev/null
fi
exit $FAILED
