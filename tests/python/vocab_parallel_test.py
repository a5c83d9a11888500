"""The vocabulary-parallel LM head over real processes: 2 and 4 Gloo ranks in one TP
group, and TP 2 x DP 2 on 4 ranks, each rank holding vocab / tp rows of the head; every
rank's chosen-token logprobs and the gradients of its hidden states and LM-head shard must
equal the single-process LM head's in FP32 (vocab_parallel_worker checks, at temperatures
1 and 0.7, on inputs drawn from a fresh seed printed here).

Run: VOCAB_PARALLEL_WORKER=build/tests/vocab_parallel_worker python3 tests/python/vocab_parallel_test.py
"""
import os
import random
import sys

from rank_workers import free_port, run_ranks

WORKER = os.environ.get("VOCAB_PARALLEL_WORKER", "build/tests/vocab_parallel_worker")


def run(world, tp, seed):
    port = free_port()
    results = run_ranks(WORKER, world, lambda r: [world, tp, port, seed], 2,
                        f"world {world} tp {tp} seed {seed}")
    # Every rank saw a real, non-trivial case, and each temperature's logprobs differ.
    by_t = {}
    for row in results:
        assert row["weight_grad_max"] > 1e-3, row
        by_t.setdefault(row["temperature"], set()).add(round(row["logp_mean"], 5))
    assert len(by_t) == 2 and all(len(v) == 1 for v in by_t.values()), by_t
    assert by_t[1.0] != by_t[0.7], by_t
    worst = max(max(r["logp_diff"], r["hidden_grad_diff"], r["weight_grad_diff"])
                for r in results)
    print(f"  world {world}, tp {tp}: {len(results)} rank-temperature checks, largest "
          f"difference {worst:.3g}")


def main():
    seed = int(os.environ.get("VOCAB_PARALLEL_SEED", random.randrange(1, 2**31)))
    print(f"seed {seed}")
    run(2, 2, seed)
    run(4, 4, seed + 1)
    run(4, 2, seed + 2)  # TP 2 x DP 2: two TP groups side by side
    print("vocab_parallel: ok")


if __name__ == "__main__":
    sys.exit(main())
