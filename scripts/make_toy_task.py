"""Writes the toy arithmetic task used by configs/toy-arithmetic.yaml: addition problems
("37+48=" -> "85") split into train and held-out eval sets, the SFT set (the train
prompts with a noisy teacher's answers: a fixed 30% are off by one in the units or the tens
digit, the rest right), and a byte-level tokenizer.json (one token per byte, no merges,
plus <|endoftext|>). SFT on the noisy answers learns the sum with the teacher's noise, so
CISPO, rewarded by the true sum, has something to fix (docs/benchmarks.md, "The CPU demo").

Run: .venv/bin/python scripts/make_toy_task.py examples/toy
"""
import json
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def byte_tokenizer(path):
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Order the 256 byte symbols by the byte they stand for, so id == byte value.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_to_char = {b: chr(c) for b, c in zip(bs, cs)}
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(path)
    assert tok.token_to_id("<|endoftext|>") == 256


SFT_NOISE = 0.3


def noisy_answer(rng, a, b):
    """The teacher's answer to a+b: right with probability 1 - SFT_NOISE, else one digit off."""
    if rng.random() >= SFT_NOISE:
        return a + b
    wrong = a + b + rng.choice([-10, -1, 1, 10])
    return wrong if wrong >= 0 else a + b + 1


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "examples/toy"
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261122)
    pairs = [(a, b) for a in range(100) for b in range(100)]
    rng.shuffle(pairs)
    eval_pairs, train_pairs = pairs[:300], pairs[300:]
    for name, items in (("train", train_pairs), ("eval", eval_pairs)):
        with open(os.path.join(out, f"{name}.jsonl"), "w") as f:
            for a, b in items:
                f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    teacher = random.Random(7)
    with open(os.path.join(out, "sft.jsonl"), "w") as f:
        for a, b in train_pairs:
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(noisy_answer(teacher, a, b))}) + "\n")
    byte_tokenizer(os.path.join(out, "tokenizer.json"))
    print(f"wrote {len(train_pairs)} train, {len(train_pairs)} SFT (noisy) and {len(eval_pairs)} "
          f"eval problems to {out}")


if __name__ == "__main__":
    main()
