#!/usr/bin/env bash
# The main job: set up, build, create a small MiniMax hybrid model (7 lightning layers,
# 1 softmax layer, MoE) and score a few sequences with it through `lightrl logprobs`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/build.sh
work="${LIGHTRL_DEMO_DIR:-$root/build/demo}"
mkdir -p "$work"
./build/rl/lightrl init --config configs/models/tiny-hybrid.json --output "$work/model" --seed 1
./build/rl/lightrl logprobs --model "$work/model" --input examples/logprobs/tokens.jsonl \
  --output "$work/logprobs.jsonl"
echo "demo: wrote $work/logprobs.jsonl"
head -c 600 "$work/logprobs.jsonl"; echo
