#!/usr/bin/env bash
# The measurements of issue #21 on a lent GPU, in parts that each fit one device call:
#   check      benchmarks/gpu_check.sh: the card, the kernels compile, every `gpu` test (the
#              tensor-core attention, the captured step, FlatAdamW's kernel, the hashed
#              dropout, the prefetcher among them), the quick attention benchmark  (~3 min)
#   attention  forward+backward at N = 1024, 2048, 4096, causal and not, head dims 32, 64
#              and 128: cupy-fused (CUDA cores), cupy-fused-3xtf32, cupy-fused-tf32 and
#              torch-cuda, with the float32 and TF32 GEMM rates of the same run; then the
#              demo model's sizes (N = 24, 64, B=64, H=4, d=32), naive against fused: the
#              case for "auto" taking the fused kernels at every size on a GPU  (~4.5 min)
#   train      `minivlm bench train --device cuda`: eager, the step captured as a CUDA
#              graph (graph-cuda) and PyTorch eager, reference and demo models  (~1 min)
#   demo       200 demo steps: data workers auto, 0, and auto with --cuda-graph  (~3 min)
# Every report and log lands in $OUT (default benchmarks/results/gpu-<date>). A part that
# fails is reported and the next one runs.
#
# usage: OUT=/some/dir bash benchmarks/gpu_session.sh [check] [attention] [train] [demo]
#        (no part named: all four)
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu-$(date -u +%Y-%m-%d)}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null || true
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(check attention train demo)

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

check() {
    step gpu_check 300 bash benchmarks/gpu_check.sh
}

attention() {
    for head_dim in 64 32 128; do
        step "attention-d$head_dim" 150 "$PYTHON" -m minivlm bench attention --device cuda \
            --impl cupy-fused cupy-fused-3xtf32 cupy-fused-tf32 torch-cuda \
            --sizes 1024 2048 4096 --head-dim "$head_dim" --repeats 3 --warmup 1 \
            --input-sets 1 --json "$OUT/attention-gpu-d$head_dim.json"
    done
    step attention-small 90 "$PYTHON" -m minivlm bench attention --device cuda \
        --impl cupy-naive cupy-fused cupy-auto torch-cuda --sizes 24 64 --batch 64 --heads 4 \
        --head-dim 32 --repeats 5 --warmup 2 --json "$OUT/attention-gpu-small.json"
}

train() {
    step train 150 "$PYTHON" -m minivlm bench train --device cuda --json "$OUT/train-gpu.json"
}

demo() {
    for run in "auto" "0" "auto --cuda-graph"; do
        local name
        name=$(echo "$run" | tr -d ' -')
        # shellcheck disable=SC2086  # $run holds the flag after the worker count
        step "demo-steps-$name" 100 "$PYTHON" -m minivlm train --preset demo --device cuda \
            --steps 200 --eval-every 1000 --data-workers $run --out-dir "$OUT/demo-$name" \
            --overwrite --no-progress
        tail -n 1 "$OUT/demo-$name/log.jsonl" > "$OUT/demo-steps-$name.json" 2>/dev/null
    done
}

for part in "${parts[@]}"; do
    case $part in
        check | attention | train | demo) "$part" ;;
        *) echo "unknown part $part: expected check, attention, train or demo"; exit 2 ;;
    esac
done
echo "reports in $OUT"
