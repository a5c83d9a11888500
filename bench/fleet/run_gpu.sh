#!/usr/bin/env bash
# Rollout tokens/s through the gRPC fleet on the GPU machine: builds lightrl with CUDA,
# makes the ~0.5B bench model (bench/engine/bench_model_config.json, random weights),
# starts one `lightrl rollout-worker` per GPU (bf16) and drives them with fleet_bench;
# for comparison, `lightrl generate` in-process on one GPU with the same prompts.
#   bench/fleet/run_gpu.sh      (results under $OUT, default build/fleet_gpu_out)
# Knobs: NUM_GROUPS (64 prompt groups), N (4 samples each), NEW_TOKENS (128), GPUS (all).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/build/fleet_gpu_out}"
WORK_DEFAULT=/tmp/lightrl_fleet_gpu
NUM_GROUPS="${NUM_GROUPS:-64}"
N="${N:-4}"
NEW_TOKENS="${NEW_TOKENS:-128}"
GPUS="${GPUS:-$(nvidia-smi -L | wc -l)}"
source "$ROOT/bench/gpu_env.sh"

GPU_BUILD_TARGETS="lightrl fleet_bench"
source "$ROOT/bench/gpu_build.sh"
[ -x "$B/bench/fleet_bench" ] || { tail -30 "$OUT/build.log"; exit 1; }

PYTHONUNBUFFERED=1 $PY "$ROOT/bench/engine/hf_bench.py" --config "$ROOT/bench/engine/bench_model_config.json" \
  --model-dir "$W/bench_model" --prompts-dir "$W" --batches "$NUM_GROUPS" --skip-hf > "$OUT/model.log" 2>&1
note "bench model rc=$? after $(elapsed) s"
PROMPTS="$W/prompts_$NUM_GROUPS.jsonl"

# In-process reference: the same prompts and samples on one GPU.
start=$(date +%s%N)
"$LIGHTRL" generate --model "$W/bench_model" --input "$PROMPTS" --output "$W/gen.jsonl" --n "$N" \
  --device cuda --dtype bfloat16 --temperature 1 --max-new-tokens "$NEW_TOKENS" --early-stop-window 0 \
  --stop-token-ids= --max-num-seqs $((NUM_GROUPS * N)) --kv-cache-mb 4096 > "$OUT/generate.log" 2>&1
note "in-process generate rc=$? ($NUM_GROUPS x $N samples, $NEW_TOKENS tokens, wall incl. load $(( ($(date +%s%N) - start) / 1000000 )) ms): $(grep 'lightrl generate:' "$OUT/generate.log" | tail -1)"

for workers in $(seq 1 "$GPUS"); do
  pids=(); addrs=()
  for g in $(seq 0 $((workers - 1))); do
    CUDA_VISIBLE_DEVICES=$g "$LIGHTRL" rollout-worker --model "$W/bench_model" --device cuda --dtype bfloat16 \
      --max-num-seqs $((NUM_GROUPS * N)) --kv-cache-mb 4096 --listen 127.0.0.1:0 > "$OUT/worker_${workers}_$g.log" 2>&1 &
    pids+=($!)
  done
  for g in $(seq 0 $((workers - 1))); do
    for _ in $(seq 1 120); do
      a=$(head -1 "$OUT/worker_${workers}_$g.log" 2>/dev/null | awk '/^listening on/ {print $3}')
      [ -n "$a" ] && break
      sleep 0.5
    done
    addrs+=("$a")
  done
  "$B/bench/fleet_bench" --workers "$(IFS=,; echo "${addrs[*]}")" --prompts "$PROMPTS" --n "$N" \
    --max-new-tokens "$NEW_TOKENS" --capacity "$NUM_GROUPS" --repeats 2 > "$OUT/fleet_$workers.jsonl" 2> "$OUT/fleet_$workers.err"
  note "fleet with $workers worker(s) rc=$?: $(tr '\n' ' ' < "$OUT/fleet_$workers.jsonl") $(tail -2 "$OUT/fleet_$workers.err")"
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null
done
note "done after $(elapsed) s"
