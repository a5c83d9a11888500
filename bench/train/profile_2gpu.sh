#!/usr/bin/env bash
# Where the data-parallel update's extra time goes: one SFT update profiled on one GPU
# alone and on rank 0 of a 2-GPU group, each summarised by trace_summary.py (kernels by
# name, GPU idle gaps by host op). Run after run_train.sh has built train_bench and made
# the bench model (same E2E_BUILD_DIR / E2E_WORK_DIR).
#   bench/train/profile_2gpu.sh          (traces and summaries under $OUT)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/build/train_out}"
B="${E2E_BUILD_DIR:-/tmp/lightrl_cuda_build}"
W="${E2E_WORK_DIR:-/tmp/lightrl_e2e}"
PY=$(command -v python3)
mkdir -p "$OUT"
args=(--model "$W/bench_model" --batch "${BATCH:-8}" --seq-len "${SEQ_LEN:-2048}" --steps 5 --mode sft)
"$B/bench/train_bench" "${args[@]}" --profile "$OUT/trace_1gpu.json" > /dev/null
port=$(( 29600 + RANDOM % 1000 ))
for r in 0 1; do
  RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$B/bench/train_bench" "${args[@]}" --bucket-mb "${BUCKET_MB:-100}" \
    --grad-reduce-dtype "${GRAD_REDUCE_DTYPE:-float32}" --profile "$OUT/trace_2gpu.json" > /dev/null &
done
wait
$PY "$ROOT/bench/train/trace_summary.py" "$OUT/trace_1gpu.json" 30 > "$OUT/trace_1gpu.txt"
$PY "$ROOT/bench/train/trace_summary.py" "$OUT/trace_2gpu.json" 30 > "$OUT/trace_2gpu.txt"
head -1 "$OUT/trace_1gpu.txt" "$OUT/trace_2gpu.txt"
