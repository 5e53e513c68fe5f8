#!/usr/bin/env bash
# The measurements of issue #21 for one lent GPU, in one call (about 8 minutes on an H100):
#   1. benchmarks/gpu_check.sh: the card, the kernels compile, every `gpu` test (the
#      tensor-core attention, the flat AdamW kernel, the prefetcher among them), the quick
#      attention benchmark
#   2. attention forward+backward at N = 1024, 2048, 4096, head dims 32, 64, 128, causal
#      and not: cupy-fused (CUDA cores), cupy-fused-3xtf32, cupy-fused-tf32, torch-cuda,
#      with the float32 and TF32 GEMM rates of the same run
#   3. the training step of both models (`minivlm bench train --device cuda`): eager, the
#      step captured as a CUDA graph (graph-cuda) and PyTorch eager
#   4. the demo preset's training throughput for 300 steps: data workers "auto" and 0,
#      and "auto" with --cuda-graph
# Every report lands in $OUT (default benchmarks/results/gpu-<date>), with the log of each
# step. A step that fails is reported and the next one runs.
#
# usage: OUT=/some/dir bash benchmarks/gpu_session.sh
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-$(date -u +%Y-%m-%d)}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null || true

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    echo "==== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "==== $name: exit $? after $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
}

step gpu_check 420 bash benchmarks/gpu_check.sh
for head_dim in 32 64 128; do
    step "attention-d$head_dim" 240 "$PYTHON" -m minivlm bench attention --device cuda \
        --impl cupy-fused cupy-fused-3xtf32 cupy-fused-tf32 torch-cuda \
        --sizes 1024 2048 4096 --head-dim "$head_dim" --repeats 5 \
        --json "$OUT/attention-gpu-d$head_dim.json"
done
step train 240 "$PYTHON" -m minivlm bench train --device cuda --json "$OUT/train-gpu.json"
for run in "auto" "0" "auto --cuda-graph"; do
    name=$(echo "$run" | tr -d ' -')
    # shellcheck disable=SC2086  # $run holds the flag after the worker count
    step "demo-steps-$name" 240 "$PYTHON" -m minivlm train --preset demo --device cuda \
        --steps 300 --data-workers $run --out-dir "$OUT/demo-$name" --overwrite --no-progress
    tail -n 1 "$OUT/demo-$name/log.jsonl" > "$OUT/demo-steps-$name.json" 2>/dev/null
done
echo "reports in $OUT"
