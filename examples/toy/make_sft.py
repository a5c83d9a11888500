"""Writes examples/toy/sft.jsonl, the demo's SFT data: the training prompts with the
answers of a noisy teacher. A fixed 30% of the answers are off by one in the units or the
tens digit (sum +-1 or +-10), the rest are right. SFT on it learns addition with the
teacher's noise (greedy decoding is mostly right, samples at temperature 1 often are
not); CISPO, rewarded by the true sum, then has something to fix.

  python3 examples/toy/make_sft.py   (deterministic: the same file on every run)
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
NOISE = 0.3
SEED = 7


def main():
    rng = random.Random(SEED)
    wrong = total = 0
    with open(os.path.join(HERE, "train.jsonl")) as src, \
            open(os.path.join(HERE, "sft.jsonl"), "w") as dst:
        for line in src:
            row = json.loads(line)
            total += 1
            if rng.random() < NOISE:
                right = int(row["answer"])
                answer = right + rng.choice([-10, -1, 1, 10])
                row["answer"] = str(answer if answer >= 0 else right + 1)
                wrong += 1
            dst.write(json.dumps(row) + "\n")
    print(f"sft.jsonl: {total} rows, {wrong} with a wrong answer")


if __name__ == "__main__":
    main()
