#!/usr/bin/env bash
# NCCL weight broadcast on the 2-GPU machine: builds the CUDA tree, runs
# weight_broadcast_gpu_test (a learner policy on cuda:0 publishing to a rollout worker on
# cuda:1, then the worker's greedy tokens against the learner-side engine) with its small
# model and again with the ~0.5B bench model (publish time vs a raw 1 GiB broadcast).
#   bench/fleet/run_broadcast.sh    (results under $OUT, default build/broadcast_out)
# Knobs: SKIP_TESTS=1 (only the lightrl run), RUN_TIMEOUT (240 s).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${OUT:-$ROOT/build/broadcast_out}"
KEEP_SUMMARY=1 GPU_NOTE=broadcast
source "$ROOT/bench/gpu_env.sh"
GPU_BUILD_TARGETS="weight_broadcast_gpu_test lightrl"
source "$ROOT/bench/gpu_build.sh"
grep -E "NCCL" "$OUT/build.log" | head -3 | tee -a "$S"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
"$B/tests/weight_broadcast_gpu_test" > "$OUT/broadcast_small.log" 2>&1
note "weight_broadcast_gpu_test (small model) rc=$?"
grep -E "publish of|greedy tokens|raw NCCL|PASSED|FAILED|SKIPPED|Failure|Expected|Which is|error" "$OUT/broadcast_small.log" | head -20 | tee -a "$S"
LIGHTRL_BROADCAST_MODEL_CONFIG="$ROOT/bench/engine/bench_model_config.json" \
  "$B/tests/weight_broadcast_gpu_test" --gtest_filter='*WorkerOnAnotherGpu*' > "$OUT/broadcast_bench_model.log" 2>&1
note "weight_broadcast_gpu_test (bench model) rc=$?"
grep -E "publish of|greedy tokens|PASSED|FAILED|Failure|Expected|Which is|error" "$OUT/broadcast_bench_model.log" | head -20 | tee -a "$S"
fi
# The whole loop: `lightrl run` with the learner on cuda:0 and one spawned rollout worker
# on cuda:1, weights by NCCL broadcast after every step.
CFG="$ROOT/configs/.nccl-run.yaml"
sed -e 's/^  device: cpu/  device: cuda:0/' -e 's/^  steps: 100/  steps: 4/' -e 's/^  steps: 500/  steps: 0/' \
    -e 's/^  eval_every: 25/  eval_every: 0/' -e 's|^  output_dir: .*|  output_dir: '"$OUT"'/nccl-run|' \
    "$ROOT/configs/toy-arithmetic.yaml" > "$CFG"
cat >> "$CFG" <<'YAML'
fleet:
  mode: spawn
  rollout_workers: 1
  worker_device: cuda:1
  weight_sync: nccl
YAML
run_start=$(date +%s)
timeout "${RUN_TIMEOUT:-240}" "$B/rl/lightrl" run --config "$CFG" > "$OUT/nccl_run.log" 2>&1
note "lightrl run, fleet.weight_sync nccl, learner cuda:0, worker cuda:1: rc=$? in $(( $(date +%s) - run_start )) s"
tail -3 "$OUT/nccl_run.log" | tee -a "$S"
$PY - "$OUT/nccl-run/metrics.jsonl" <<'PYEOF' 2>&1 | tee -a "$S"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
last = {}
for r in rows:
    last.update(r)
keys = [k for k in last if k.startswith("fleet/") or k in ("step", "time/weight_sync_s")]
print({k: last[k] for k in sorted(keys)})
PYEOF
note "broadcast total $(elapsed) s"
