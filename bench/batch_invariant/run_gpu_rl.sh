#!/usr/bin/env bash
# The toy RL task (configs/toy-arithmetic.yaml) in bf16 on one GPU, numerics.batch_invariant
# off and on, for each seed in SEEDS, all runs at once on the one GPU. Sourced after
# run_gpu.sh's build (B, W, OUT, note, elapsed; needs the `lightrl` target): writes each
# run's metrics to $OUT/rl_<seed>_<mode>.jsonl (eval, reward and mismatch lines only) and
# its last lines to the summary.
# Knobs: SEEDS ("1 2"), RL_STEPS (40), RL_BUDGET_S (300: the runs are stopped after it).
pids=()
for seed in ${SEEDS:-1 2}; do
  for mode in false true; do
    dir="$W/rl_${seed}_${mode}"
    rm -rf "$dir"
    timeout "${RL_BUDGET_S:-300}" "$B/rl/lightrl" run --config "$ROOT/configs/toy-arithmetic.yaml" \
      --no-progress --set run.device=cuda --set run.dtype=bfloat16 --set run.seed="$seed" \
      --set run.steps="${RL_STEPS:-40}" --set run.eval_every=20 --set run.output_dir="$dir" \
      --set numerics.batch_invariant="$mode" > "$W/rl_${seed}_${mode}.log" 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done
note "toy RL runs done after $(elapsed) s"
for seed in ${SEEDS:-1 2}; do
  for mode in false true; do
    m="$W/rl_${seed}_${mode}/metrics.jsonl"
    [ -f "$m" ] || { note "seed $seed mode $mode: no metrics"; tail -3 "$W/rl_${seed}_${mode}.log"; continue; }
    grep -E '"eval/accuracy|"step"' "$m" > "$OUT/rl_${seed}_${mode}.jsonl"
    note "seed $seed batch_invariant $mode: $(wc -l < "$m") metric lines"
  done
done
