#!/usr/bin/env bash
# Learner training throughput on the GPU machine: builds lightrl with the CUDA backend,
# runs the policy's GPU lightning test, creates the ~0.5B bench model (bench/engine/
# hf_bench.py, random weights), then times the learner (bench/train/train_bench.cc) on 1
# GPU and, when the machine has 2, on 2 GPUs as a data-parallel group, and transformers'
# training step on the same model and batch (bench/train/hf_train_bench.py).
#   bench/train/run_train.sh        (logs and summary under $OUT, default build/train_out)
# Knobs (environment): BATCH (8 sequences per GPU), SEQ_LEN (2048), STEPS (10), MODES
# (sft,rl), SKIP_HF (1: time only lightrl), GPU_BUILD_TARGETS (what to build), BUCKET_MB
# (25: the gradient all-reduce bucket size of the 2-GPU runs; a list times each), REPEATS
# (1: how many times the 1-GPU and 2-GPU runs alternate, for run-to-run spread),
# GRAD_REDUCE_DTYPE (float32: the 2-GPU runs' gradient all-reduce dtype; bfloat16 halves it),
# ZERO1 (0: the 2-GPU runs shard AdamW state and masters when 1).
# Needs in the tree: .device/grpc.tgz (abseil) and .device/googletest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/build/train_out}"
BATCH="${BATCH:-8}"
SEQ_LEN="${SEQ_LEN:-2048}"
STEPS="${STEPS:-10}"
MODES="${MODES:-sft,rl}"
BUCKET_MB="${BUCKET_MB:-25}"
SKIP_HF="${SKIP_HF:-0}"
REPEATS="${REPEATS:-1}"
GRAD_REDUCE_DTYPE="${GRAD_REDUCE_DTYPE:-float32}"
ZERO1="${ZERO1:-0}"
SUMMARY=train_summary.txt
source "$ROOT/bench/gpu_env.sh"
GPUS=$(nvidia-smi -L | wc -l)

GPU_BUILD_TARGETS="${GPU_BUILD_TARGETS:-train_bench lightning_cuda_test policy_test}"
source "$ROOT/bench/gpu_build.sh"
[ -x "$B/bench/train_bench" ] || { tail -30 "$OUT/build.log"; exit 1; }

"$B/tests/lightning_cuda_test" > "$OUT/lightning_cuda_test.log" 2>&1
note "lightning_cuda_test rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/lightning_cuda_test.log" | tr '\n' ' ')"
grep -E "Failure|Expected|Which is|document" "$OUT/lightning_cuda_test.log" | head -20 | tee -a "$S"

if ! [ -f "$W/bench_model/config.json" ]; then
  $PY "$ROOT/bench/engine/hf_bench.py" --config "$ROOT/bench/engine/bench_model_config.json" \
    --model-dir "$W/bench_model" --prompts-dir "$W" --batches 8 --skip-hf > "$OUT/model.log" 2>&1
  note "bench model rc=$? after $(elapsed) s"
fi

peak_mem() {  # runs "$@" while sampling GPU memory; notes the peak per GPU (MiB)
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/mem.txt" 2>/dev/null &
  local smi=$!
  "$@"
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  note "  peak GPU memory (MiB): $(sort -t, -k1,1n -k2,2n "$OUT/mem.txt" | awk -F', ' '{m[$1]=$2} END {for (g in m) printf "gpu%s %s ", g, m[g]}')"
  return $rc
}

for rep in $(seq 1 "$REPEATS"); do
[ "$REPEATS" -gt 1 ] && note "repeat $rep of $REPEATS"
for mode in ${MODES//,/ }; do
  peak_mem "$B/bench/train_bench" --model "$W/bench_model" --batch "$BATCH" --seq-len "$SEQ_LEN" \
    --steps "$STEPS" --mode "$mode" > "$OUT/train_1gpu_$mode.jsonl" 2> "$OUT/train_1gpu_$mode.err"
  note "train_bench 1 GPU $mode rc=$?: $(cat "$OUT/train_1gpu_$mode.jsonl")"
  tail -n 3 "$OUT/train_1gpu_$mode.err"
  if [ "$GPUS" -ge 2 ]; then
    for mb in ${BUCKET_MB//,/ }; do
      port=$(( 29600 + RANDOM % 1000 ))
      two_gpus() {
        local pids=()
        for r in 0 1; do
          RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
            "$B/bench/train_bench" --model "$W/bench_model" --batch "$BATCH" --seq-len "$SEQ_LEN" \
            --steps "$STEPS" --mode "$mode" --bucket-mb "$mb" --grad-reduce-dtype "$GRAD_REDUCE_DTYPE" --zero1 "$ZERO1" > "$OUT/train_2gpu_${mode}_rank$r.jsonl" 2> "$OUT/train_2gpu_${mode}_rank$r.err" &
          pids+=($!)
        done
        local rc=0
        for p in "${pids[@]}"; do wait "$p" || rc=$?; done
        return $rc
      }
      peak_mem two_gpus
      note "train_bench 2 GPUs $mode bucket_mb $mb reduce $GRAD_REDUCE_DTYPE zero1 $ZERO1 rc=$?: $(cat "$OUT/train_2gpu_${mode}_rank0.jsonl")"
      # Scaling against the 1-GPU run just before it: 2-GPU tok/s over twice 1-GPU tok/s.
      note "  scaling $mode bucket_mb $mb reduce $GRAD_REDUCE_DTYPE zero1 $ZERO1: $($PY "$ROOT/bench/train/scaling.py" \
        "$OUT/train_1gpu_$mode.jsonl" "$OUT/train_2gpu_${mode}_rank0.jsonl" 2>&1)"
      tail -n 3 "$OUT/train_2gpu_${mode}_rank0.err" "$OUT/train_2gpu_${mode}_rank1.err"
    done
  fi
done
done

if [ "$SKIP_HF" != 1 ]; then
  PYTHONUNBUFFERED=1 peak_mem $PY "$ROOT/bench/train/hf_train_bench.py" --model-dir "$W/bench_model" \
    --batch "$BATCH" --seq-len "$SEQ_LEN" --steps "$STEPS" > "$OUT/hf_train.jsonl" 2> "$OUT/hf_train.err"
  note "transformers train rc=$?: $(cat "$OUT/hf_train.jsonl")"
  tail -n 3 "$OUT/hf_train.err"
fi
note "total $(elapsed) s"
