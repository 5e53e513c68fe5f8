#!/usr/bin/env bash
# One check of the CUDA side of minivlm, for a machine with an NVIDIA GPU and CuPy:
#   1. what GPU and driver this is (nvidia-smi)
#   2. the kernels compile for sm_80/sm_90 without register spills (needs nvcc; else skipped)
#   3. every GPU test: python -m pytest -m gpu -q tests
#   4. the attention benchmark (minivlm/bench): python -m minivlm bench attention --device
#      cuda --quick, which fails when any CUDA implementation disagrees with the reference
# and a table of what ran. Without a GPU (or without CuPy) it runs step 2 only and says
# so. Installs nothing that is already there. Each step has a time limit; the whole
# script stays well under 10 minutes.
#
# usage: benchmarks/gpu_check.sh          (PYTHON=python3.11 benchmarks/gpu_check.sh)
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's minivlm, installed or not

steps=()     # "name|result|seconds" rows of the final table
failed=0

# run_step NAME LIMIT_SECONDS COMMAND...: run with a time limit, record the result
run_step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "==== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    local result
    case $rc in
        0) result=passed ;;
        5) result="no tests collected" ;;  # pytest's code for "nothing selected"
        124) result="timed out after ${limit}s"; failed=1 ;;
        *) result="FAILED (exit $rc)"; failed=1 ;;
    esac
    steps+=("$name|$result|$((SECONDS - start))")
}

skip_step() {
    steps+=("$1|skipped: $2|0")
}

# installs a pip package only when its module does not import (the GPU machine may be offline)
ensure_module() {
    local module=$1 package=$2
    if "$PYTHON" -c "import $module" 2>/dev/null; then
        return 0
    fi
    echo "$module is missing: pip install $package"
    timeout 180 "$PYTHON" -m pip install --quiet --retries 1 --timeout 15 "$package" && "$PYTHON" -c "import $module"
}

echo "==== machine"
"$PYTHON" --version
has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
    nvidia-smi | sed -n '1,4p'
    has_gpu=1
else
    echo "no NVIDIA GPU: nvidia-smi is missing or sees no device"
fi
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 2

ensure_module pytest pytest || { echo "pytest is not installed and could not be"; exit 1; }

has_cupy=0
if [ "$has_gpu" = 1 ]; then
    driver_cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -n 1)
    cupy_package=cupy-cuda12x
    [ "${driver_cuda:-12}" -ge 13 ] 2>/dev/null && cupy_package=cupy-cuda13x
    if ensure_module cupy "$cupy_package" &&
        "$PYTHON" -c "from minivlm.backend import require_cuda; require_cuda()"; then
        has_cupy=1
        "$PYTHON" -c "import cupy; print('CuPy', cupy.__version__, '| CUDA runtime',
              cupy.cuda.runtime.runtimeGetVersion())"
    else
        echo "CuPy cannot use the GPU here"
    fi
fi

run_step "kernels compile (nvcc, sm_80/sm_90, no spills)" 180 \
    "$PYTHON" -m pytest -q -s tests/test_cuda_compile.py

if [ "$has_cupy" = 1 ]; then
    run_step "GPU tests (pytest -m gpu)" 300 "$PYTHON" -m pytest -m gpu -q tests
    run_step "attention benchmark (cuda, quick)" 150 \
        "$PYTHON" -m minivlm bench attention --device cuda --quick
else
    reason=$([ "$has_gpu" = 1 ] && echo "CuPy unusable" || echo "no GPU")
    skip_step "GPU tests (pytest -m gpu)" "$reason"
    skip_step "attention benchmark (cuda, quick)" "$reason"
    echo
    echo "The GPU parts were SKIPPED ($reason): only the compile test ran."
fi

echo
echo "==== summary"
printf '%-48s %-28s %s\n' step result seconds
for row in "${steps[@]}"; do
    IFS='|' read -r name result seconds <<<"$row"
    printf '%-48s %-28s %s\n' "$name" "$result" "$seconds"
done
exit "$failed"
