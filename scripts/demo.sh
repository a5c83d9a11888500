#!/usr/bin/env bash
# The main job: set up, build, then train a tiny MiniMax hybrid (7 lightning layers + 1
# softmax layer, MoE) on two-digit addition: SFT warm-up, then CISPO. Prints held-out
# greedy accuracy before and after RL; the run (checkpoints, metrics.jsonl, TensorBoard
# events, rollout log) lands in runs/toy-arithmetic.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/build.sh
rm -rf runs/toy-arithmetic
time ./build/rl/lightrl run --config configs/toy-arithmetic.yaml
cat runs/toy-arithmetic/eval.json
