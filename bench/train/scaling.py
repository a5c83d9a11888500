"""Scaling efficiency of a 2-GPU train_bench run: its tokens/s over twice the 1-GPU run's.

    python3 bench/train/scaling.py ONE_GPU.jsonl TWO_GPU_RANK0.jsonl   ->  e.g. 91.3%
"""
import json
import sys


def tok_s(path):
    with open(path) as f:
        lines = [line for line in f if line.strip().startswith("{")]
    if not lines:
        raise SystemExit(f"{path}: no JSON result line")
    return float(json.loads(lines[-1])["tok_s"])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    one, two = tok_s(sys.argv[1]), tok_s(sys.argv[2])
    print(f"{two / (2 * one):.1%}")
