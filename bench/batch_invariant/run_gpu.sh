#!/usr/bin/env bash
# numerics.batch_invariant on one GPU, in one pass: builds lightrl with the CUDA backend
# (the targets below), runs the mode's gpu test (kernels against the CPU ops bit for bit,
# engine against learner on CUDA), the model-parallel and the engine's gpu tests, then the
# mode's cost and mismatch on the 508M bench model in bf16 at 8, 64 and 256 samples (the
# last with a KV cache small enough to preempt).
#   bench/batch_invariant/run_gpu.sh    (logs and summary under $OUT, default build/bi_gpu)
# Knobs (environment): NEW_TOKENS (64), BATCHES ("2 16 64": prompts, 4 samples each),
# RL=1 (then the toy RL runs of run_gpu_rl.sh, with its knobs), PROFILE=1 (the learner
# update under the torch profiler), EXTRA_TARGETS (built too, for later calls).
# Needs in the tree: .device/grpc.tgz (abseil) and .device/googletest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export OUT="${OUT:-$ROOT/build/bi_gpu}"
source "$ROOT/bench/gpu_env.sh"
GPU_BUILD_TARGETS="batch_invariant_gpu_test batch_invariant_bench model_parallel_gpu_test engine_gpu_test ${EXTRA_TARGETS:-}"
if [ "${RL:-0}" = 1 ]; then GPU_BUILD_TARGETS="$GPU_BUILD_TARGETS lightrl"; fi
source "$ROOT/bench/gpu_build.sh"

(cd "$B/tests" && timeout 300 ./batch_invariant_gpu_test > "$OUT/bi_gpu_test.log" 2>&1)
note "batch_invariant_gpu_test rc=$? after $(elapsed) s"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |OK \]|FAILED  \]|Failure|differ|seed" "$OUT/bi_gpu_test.log" | head -40 | tee -a "$S"
(cd "$B/tests" && timeout 200 ./model_parallel_gpu_test > "$OUT/mp_gpu_test.log" 2>&1)
note "model_parallel_gpu_test rc=$? after $(elapsed) s"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|Failure" "$OUT/mp_gpu_test.log" | head -20 | tee -a "$S"
# The kernel path's decode shares the staged inputs and graph capture with the mode's.
(cd "$B/tests" && timeout 300 ./engine_gpu_test > "$OUT/engine_gpu_test.log" 2>&1)
note "engine_gpu_test rc=$? after $(elapsed) s"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|Failure" "$OUT/engine_gpu_test.log" | head -20 | tee -a "$S"

for P in ${BATCHES:-2 16 64}; do
  kv=256
  if [ "$P" -ge 64 ]; then kv=12; fi  # 12 MB: 12K tokens of KV (1 KB a token) for ~26K wanted
  timeout 400 "$B/bench/batch_invariant/batch_invariant_bench" --device cuda --dtype bfloat16 \
    --model bench --prompts "$P" --n 4 --new-tokens "${NEW_TOKENS:-64}" --repeats 3 --kv-mb $kv \
    >> "$OUT/bench.jsonl" 2>> "$OUT/bench.err"
  note "bench prompts $P rc=$? after $(elapsed) s"
done
cat "$OUT/bench.jsonl" | tee -a "$S"
# PROFILE=1: where each mode's learner update spends its time at 64 prompts x 4 (the torch
# profiler's busiest CPU ops and CUDA kernels, batch_invariant_bench --profile-learner).
if [ "${PROFILE:-0}" = 1 ]; then
  timeout 300 "$B/bench/batch_invariant/batch_invariant_bench" --device cuda --dtype bfloat16 \
    --model bench --prompts 64 --n 4 --new-tokens "${NEW_TOKENS:-64}" --repeats 2 --kv-mb 256 \
    --profile-learner 30 2>&1 | grep -E "^profile" > "$OUT/profile.txt"
  note "profile after $(elapsed) s"; cat "$OUT/profile.txt" | tee -a "$S"
fi
tail -5 "$OUT/bench.err"
# RL=1: the toy task's RL runs with the mode off and on (run_gpu_rl.sh).
if [ "${RL:-0}" = 1 ]; then source "$ROOT/bench/batch_invariant/run_gpu_rl.sh"; fi
note "total $(elapsed) s"
