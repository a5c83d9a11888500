"""Tensor parallelism over real processes: TP 2 on 2 Gloo ranks and TP 2 x DP 2 on 4, on
TinyParallelConfig with random weights drawn from a fresh seed (printed here). Every rank
(tensor_parallel_worker) loads its shard of the whole model from an HF checkpoint and
checks, in FP32, its logprobs and every parameter shard's gradient against the whole
model's, then one TrainRl (CISPO) and one TrainSft update against a single-process
learner's on the same batch (TrainRl also with ZeRO-1 over the DP group and activation
checkpointing); all of it again with sequence parallelism, and the learner updates with
expert parallelism as well (TP 2 x EP 2 on 2 ranks, TP 2 x EP 4 on 4); a shard handed to a learner without its TP group, or at another TP rank,
is a named error.

Run: TENSOR_PARALLEL_WORKER=build/tests/tensor_parallel_worker python3 tests/python/tensor_parallel_test.py
"""
import os
import random
import sys
import tempfile

from rank_workers import free_port, run_ranks

WORKER = os.environ.get("TENSOR_PARALLEL_WORKER", "build/tests/tensor_parallel_worker")
CHECKS = ("model", "learner_rl", "learner_sft", "learner_rl_zero1",
          "model_sp", "learner_rl_sp", "learner_sft_sp", "learner_rl_zero1_sp", "errors")
LEARNER_CHECKS = [c for c in CHECKS if c.startswith("learner_")]
EP_CHECKS = ("learner_rl_sp_ep", "learner_sft_sp_ep", "learner_rl_zero1_sp_ep")


def run(world, tp, seed, ep=1):
    port = free_port()
    checks = EP_CHECKS if ep > 1 else CHECKS
    extra = [ep] if ep > 1 else []
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_ranks(WORKER, world, lambda r: [world, tp, port, seed, tmp, *extra],
                         len(checks), f"world {world} tp {tp} ep {ep} seed {seed}")
    by_check = {c: [row for row in rows if row["check"] == c] for c in checks}
    assert all(len(v) == world for v in by_check.values()), by_check
    if ep > 1:
        for c in checks:
            assert all(row["moved"] > 1e-3 and row["updates"] >= 1 for row in by_check[c]), \
                by_check[c]
        print(f"  world {world}, tp {tp} x ep {ep} sequence-parallel: largest relative "
              "differences: " + ", ".join(
                  f"{c[8:-6]} weights {max(r['weight_diff'] for r in by_check[c]):.3g} (of lr)"
                  for c in checks))
        return
    # Every rank checked real gradients and real updates; the ranks of one TP group agree
    # on the logprobs (and the DP groups ran different documents).
    for name in ("model", "model_sp"):
        model = by_check[name]
        assert all(row["grads"] >= 20 for row in model), model
        means = {round(row["logp_mean"], 5) for row in model}
        assert len(means) == world // tp, model
    assert all(row["ok"] for row in by_check["errors"]), by_check["errors"]
    for c in LEARNER_CHECKS:
        assert all(row["moved"] > 1e-3 and row["updates"] >= 1 for row in by_check[c]), by_check[c]
    for sp in ("", "_sp"):
        print(f"  world {world}, tp {tp}{' sequence-parallel' if sp else ''}: largest relative "
              f"differences: gradients {max(r['grad_diff'] for r in by_check['model' + sp]):.3g}, "
              + ", ".join(f"{c[8:-len(sp) or None]} weights "
                          f"{max(r['weight_diff'] for r in by_check[c]):.3g} (of lr)"
                          for c in LEARNER_CHECKS if c.endswith("_sp") == bool(sp)))


def main():
    seed = int(os.environ.get("TENSOR_PARALLEL_SEED", random.randrange(1, 2**31)))
    print(f"seed {seed}")
    run(2, 2, seed)
    run(4, 2, seed + 1)  # TP 2 x DP 2: two TP groups side by side
    # Tensor x expert parallelism: the EP group is the TP group, then spans both DP groups.
    run(2, 2, seed + 2, ep=2)
    run(4, 2, seed + 3, ep=4)
    print("tensor_parallel: ok")


if __name__ == "__main__":
    sys.exit(main())
