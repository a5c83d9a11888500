#!/usr/bin/env bash
# Everything the GPU machine checks in one pass: builds lightrl with the CUDA backend (all
# targets), runs every CTest test labelled gpu, then the engine's and the learner's
# benchmarks against transformers on the same 508M bench model:
#   1. hf_bench.py: the model (random weights, saved once) and transformers' generate;
#   2. engine_bench: lightrl's engine at the same batch sizes;
#   3. run_train.sh: the learner on 1 and 2 GPUs and transformers' training step.
#   bench/gpu_suite.sh        (logs and summary under $OUT, default build/gpu_suite)
# Knobs (environment): TEST_BUDGET_S (240: ctest's share), BATCHES (8,64,256), and
# run_train.sh's BUCKET_MB (100), REPEATS (3: 1-GPU and 2-GPU runs alternate three times)
# and STEPS (20 timed updates a run).
# Needs in the tree: .device/grpc.tgz (abseil) and .device/googletest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export OUT="${OUT:-$ROOT/build/gpu_suite}"
BATCHES="${BATCHES:-8,64,256}"
TEST_BUDGET_S="${TEST_BUDGET_S:-240}"
source "$ROOT/bench/gpu_env.sh"

GPU_BUILD_TARGETS=""
source "$ROOT/bench/gpu_build.sh"

(cd "$B" && timeout "$TEST_BUDGET_S" ctest -L gpu --timeout 200 --output-on-failure > "$OUT/ctest_gpu.log" 2>&1)
note "ctest -L gpu rc=$? after $(elapsed) s"
grep -E "Test +#|tests passed|tests failed" "$OUT/ctest_gpu.log" | tee -a "$S"
grep -E "Failure|Expected|Which is|Error|error:" "$OUT/ctest_gpu.log" | head -30 | tee -a "$S"

PYTHONUNBUFFERED=1 $PY "$ROOT/bench/engine/hf_bench.py" --config "$ROOT/bench/engine/bench_model_config.json" \
  --model-dir "$W/bench_model" --prompts-dir "$W" --batches "$BATCHES" > "$OUT/hf.jsonl" 2> "$OUT/hf.err"
note "transformers generate rc=$? after $(elapsed) s"; cat "$OUT/hf.jsonl" | tee -a "$S"
"$B/bench/engine_bench" --model "$W/bench_model" --prompts-dir "$W" --batches "$BATCHES" \
  --new-tokens 128 > "$OUT/engine_bench.jsonl" 2> "$OUT/engine_bench.err"
note "engine_bench rc=$? after $(elapsed) s"; cat "$OUT/engine_bench.jsonl" | tee -a "$S"
tail -3 "$OUT/engine_bench.err"

E2E_BUILD_DIR="$B" E2E_WORK_DIR="$W" GPU_BUILD_TARGETS="train_bench" BUCKET_MB="${BUCKET_MB:-100}" \
  REPEATS="${REPEATS:-3}" STEPS="${STEPS:-20}" \
  bash "$ROOT/bench/train/run_train.sh" > "$OUT/train.log" 2>&1
note "run_train.sh rc=$? after $(elapsed) s"; grep -v "^$" "$OUT/train_summary.txt" | tee -a "$S"
note "total $(elapsed) s"
