#!/usr/bin/env bash
# End-to-end engine benchmark on the GPU machine: builds lightrl with the CUDA backend,
# runs the engine's GPU tests and the CPU engine/policy tests, checks `lightrl logprobs`
# on CUDA bf16 against CPU FP32 on a random model (`lightrl init`), creates the ~0.5B bench
# model with transformers (random weights, saved once, loaded by both), and times greedy
# generation of lightrl vs transformers at batch 8, 64, 256 (128-token prompts, 128 new
# tokens, as /work/shared/device/peer_bench.py), then one long-generation run.
#   bench/engine/run_e2e.sh            (logs and summary under $OUT, default build/e2e_out)
# Knobs (environment): LONG_SEQS (2), LONG_TOKENS (16384), LONG_REPORT (8192),
# BATCHES (8,64,256: engine_bench), CLI_BATCHES (64: lightrl generate),
# DEADLINE_S (560: the long run is cut to what is left of it), SKIP_HF (1: make the model
# and prompts, time only lightrl), SHORT_TOKENS (8: each batch also generates this many
# tokens, so that the fixed cost of a run and the cost of a step can be told apart),
# EAGER_BATCHES (64: also run these batch sizes with --enforce-eager, and compare tokens).
# Needs in the tree: .device/grpc.tgz (abseil) and .device/googletest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/build/e2e_out}"
LONG_SEQS="${LONG_SEQS:-2}"
LONG_TOKENS="${LONG_TOKENS:-16384}"
BATCHES="${BATCHES:-8,64,256}"
DEADLINE_S="${DEADLINE_S:-560}"
SKIP_HF="${SKIP_HF:-0}"
SHORT_TOKENS="${SHORT_TOKENS:-8}"
EAGER_BATCHES="${EAGER_BATCHES:-64}"
CLI_BATCHES="${CLI_BATCHES:-64}"
LONG_REPORT="${LONG_REPORT:-8192}"
source "$ROOT/bench/gpu_env.sh"

GPU_BUILD_TARGETS="${GPU_BUILD_TARGETS:-engine_gpu_test paged_attention_kernels_test rms_norm_kernels_test engine_test policy_test lightrl engine_bench}"
source "$ROOT/bench/gpu_build.sh"
[ -x "$B/tests/engine_gpu_test" ] || { tail -30 "$OUT/build.log"; exit 1; }

# Tests: the engine on CUDA, and the CPU suites on this machine.
for t in paged_attention_kernels_test rms_norm_kernels_test engine_gpu_test engine_test policy_test; do
  "$B/tests/$t" > "$OUT/$t.log" 2>&1
  note "$t rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/$t.log" | tr '\n' ' ')"
done
grep -E "relative error|greedy tokens|Pearson|graph replay|Failure|FAILED|Expected|Which is" "$OUT/engine_gpu_test.log" | tee -a "$S"
grep -E "Failure|FAILED|Expected|Which is|seed" "$OUT/paged_attention_kernels_test.log" "$OUT/rms_norm_kernels_test.log" | head -20 | tee -a "$S"

# lightrl logprobs on CUDA bf16 against CPU FP32, random model from `lightrl init`.
cat > "$W/small_config.json" <<'JSON'
{"vocab_size": 1024, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
 "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128, "num_local_experts": 4,
 "num_experts_per_tok": 2, "max_position_embeddings": 4096, "block_size": 256,
 "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
 "rms_norm_eps": 1e-05, "tie_word_embeddings": false, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}
JSON
$PY - "$W/lp_in.jsonl" <<'PYEOF'
import json, random, sys
random.seed(3)
with open(sys.argv[1], "w") as f:
    for n in (5, 77, 300, 1000):
        f.write(json.dumps({"tokens": [random.randrange(1024) for _ in range(n)]}) + "\n")
PYEOF
"$LIGHTRL" init --config "$W/small_config.json" --output "$W/random_model" --seed 7 > "$OUT/logprobs.log" 2>&1 &&
"$LIGHTRL" logprobs --model "$W/random_model" --input "$W/lp_in.jsonl" --output "$W/lp_cuda.jsonl" \
  --device cuda --dtype bfloat16 >> "$OUT/logprobs.log" 2>&1 &&
"$LIGHTRL" logprobs --model "$W/random_model" --input "$W/lp_in.jsonl" --output "$W/lp_cpu.jsonl" \
  >> "$OUT/logprobs.log" 2>&1
note "logprobs cuda/bf16 + cpu/fp32 rc=$?"
$PY - "$W/lp_cuda.jsonl" "$W/lp_cpu.jsonl" <<'PYEOF' 2>&1 | tee -a "$S"
import json, sys, math
a = [x for l in open(sys.argv[1]) for x in json.loads(l)["logprobs"][1:]]
b = [x for l in open(sys.argv[2]) for x in json.loads(l)["logprobs"][1:]]
n = len(a); ma = sum(a) / n; mb = sum(b) / n
cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
r = cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
print(f"logprobs cuda bf16 vs cpu fp32: {n} tokens, max |diff| {max(abs(x - y) for x, y in zip(a, b)):.4f}, "
      f"mean |diff| {sum(abs(x - y) for x, y in zip(a, b)) / n:.5f}, Pearson {r:.6f}")
PYEOF

# Bench model (same weights for both) and transformers' generate.
PYTHONUNBUFFERED=1 $PY "$ROOT/bench/engine/hf_bench.py" --config "$ROOT/bench/engine/bench_model_config.json" \
  --model-dir "$W/bench_model" --prompts-dir "$W" --batches "$BATCHES" \
  $([ "$SKIP_HF" = 1 ] && echo --skip-hf) > "$OUT/hf.jsonl" 2> "$OUT/hf.err"
note "transformers rc=$? after $(elapsed) s"
cat "$OUT/hf.jsonl" | tee -a "$S"

# In-process engine throughput, timed as transformers is (warm-up, then one timed run).
"$B/bench/engine_bench" --model "$W/bench_model" --prompts-dir "$W" --batches "$BATCHES" \
  --new-tokens 128 > "$OUT/engine_bench.jsonl" 2> "$OUT/engine_bench.err"
note "engine_bench rc=$?"; cat "$OUT/engine_bench.jsonl" | tee -a "$S"
"$B/bench/engine_bench" --model "$W/bench_model" --prompts-dir "$W" --batches "$EAGER_BATCHES" \
  --new-tokens 128 --enforce-eager 1 > "$OUT/engine_bench_eager.jsonl" 2>> "$OUT/engine_bench.err"
note "engine_bench --enforce-eager rc=$?"; cat "$OUT/engine_bench_eager.jsonl" | tee -a "$S"

# lightrl generate (the CLI, a fresh process each: load, capture and prefill included),
# greedy, EOS ignored (empty stop ids), no early stop.
for bs in ${CLI_BATCHES//,/ }; do
  for n in $SHORT_TOKENS 128; do
    "$LIGHTRL" generate --model "$W/bench_model" --input "$W/prompts_$bs.jsonl" --output "$W/gen_$bs.jsonl" \
      --device cuda --dtype bfloat16 --temperature 0 --max-new-tokens $n --early-stop-window 0 \
      --stop-token-ids= --max-num-seqs "$bs" --kv-cache-mb 2048 > "$W/gen_${bs}_$n.log" 2>&1
    note "lightrl generate batch $bs, $n new tokens, rc=$?: $(grep 'lightrl generate:' "$W/gen_${bs}_$n.log" | tail -1)"
  done
done
# The same decode steps launched op by op (no CUDA graphs), at one batch size.
for bs in ${EAGER_BATCHES//,/ }; do
  "$LIGHTRL" generate --model "$W/bench_model" --input "$W/prompts_$bs.jsonl" --output "$W/gen_eager_$bs.jsonl" \
    --device cuda --dtype bfloat16 --temperature 0 --max-new-tokens 128 --early-stop-window 0 \
    --stop-token-ids= --max-num-seqs "$bs" --kv-cache-mb 2048 --enforce-eager > "$W/gen_eager_$bs.log" 2>&1
  note "lightrl generate --enforce-eager batch $bs, 128 new tokens, rc=$?: $(grep 'lightrl generate:' "$W/gen_eager_$bs.log" | tail -1)"
  cmp -s <(python3 -c "import json,sys;[print(json.loads(l)['tokens']) for l in open(sys.argv[1])]" "$W/gen_$bs.jsonl") \
         <(python3 -c "import json,sys;[print(json.loads(l)['tokens']) for l in open(sys.argv[1])]" "$W/gen_eager_$bs.jsonl")
  note "greedy tokens, graphs vs eager at batch $bs: $([ $? = 0 ] && echo identical || echo differ)"
done

# One long run: a few sequences generating as long as the deadline allows; engine_bench
# prints a line every LONG_REPORT tokens, so a run cut by the deadline still reports.
left=$(( DEADLINE_S - $(elapsed) ))
if [ "$left" -gt 30 ]; then
  note "long run: $LONG_SEQS sequences x $LONG_TOKENS new tokens, limit $left s"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader -lms 2000 > "$OUT/long_mem.txt" 2>/dev/null &
  smi=$!
  timeout "$left" "$B/bench/engine_bench" --model "$W/bench_model" --batches "" \
    --long-seqs "$LONG_SEQS" --long-tokens "$LONG_TOKENS" --long-report "$LONG_REPORT" \
    > "$OUT/long.jsonl" 2> "$OUT/long.err"
  note "long run rc=$?"; cat "$OUT/long.jsonl" | tee -a "$S"
  kill "$smi" 2>/dev/null
  note "GPU memory used during the long run (MiB, min/max/last): $(sort -n "$OUT/long_mem.txt" | sed -n '1p;$p' | tr '\n' ' ') $(tail -1 "$OUT/long_mem.txt")"
else
  note "long run skipped: $left s left"
fi
note "total $(elapsed) s"
echo; echo "== summary"; cat "$S"
