"""The engine on a tensor- or expert-parallel rollout instance over real processes: TP 2 on
2 Gloo ranks, EP 2 on 2 and EP 4 on 4 (each rank holding its experts only), TP 2 x EP 2
on 2 (each rank its heads, vocabulary rows and experts), EP 2, TP 2 and TP 2 x EP 2 in
the batch-invariant mode (every logprob the whole model's bit for bit), on
TinyParallelConfig with random weights drawn from a fresh seed (printed here).
Every rank (engine_tp_worker) loads its shard of the whole model from an HF checkpoint and
generates, with small max_prefill_tokens, max_num_seqs and KV cache (admissions, prefills,
decodes and preemptions interleave), the same requests as an engine on the whole model in
its own process: greedy tokens equal and FP32 logprobs within 2e-5; sampled tokens (fixed
seeds, n = 2) equal on every rank bit for bit and to the whole model's; a request cancelled
on one rank only is cancelled on both; the shard without its TP group, and engine options
that differ across the ranks, are refused. Then
the ranks form a rollout instance (rl/rollout_instance.h): rank 0 serves greedy and sampled
groups through a RolloutWorkerCore whose batches the other rank follows, with the whole
model's tokens.

Run: ENGINE_TP_WORKER=build/tests/engine_tp_worker python3 tests/python/engine_tp_test.py
"""
import os
import random
import sys
import tempfile

from rank_workers import free_port, run_ranks

WORKER = os.environ.get("ENGINE_TP_WORKER", "build/tests/engine_tp_worker")
CHECKS = ("errors", "options", "greedy", "sampled", "cancelled", "instance")


def run(world, seed, mode):
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_ranks(WORKER, world, lambda r: [world, port, seed, tmp, mode], len(CHECKS),
                         f"{mode} {world} seed {seed}", timeout=200)
    by_check = {c: [row for row in rows if row["check"] == c] for c in CHECKS}
    assert all(len(v) == world for v in by_check.values()), by_check
    for c in ("greedy", "sampled"):
        for row in by_check[c]:
            if mode.endswith("-invariant"):  # the batch-invariant mode: the whole model's bits
                assert row["logprob_diff"] == 0 and row["ties"] == 0, row
            # Generation went through many steps (greedy may loop over a few tokens; the
            # sampled rows visit many).
            assert row["tokens"] > 40 and row["steps"] >= 20, row
            assert c == "greedy" or row["distinct"] >= 10, row
        # The ranks ran the same steps.
        assert len({row["steps"] for row in by_check[c]}) == 1, by_check[c]
    assert any(row["preemptions"] > 0 for row in by_check["sampled"]), by_check["sampled"]
    served = [row for row in by_check["instance"] if row["rank"] == 0]
    assert len(served) == 1 and served[0]["batches"] >= 1 and served[0]["tokens"] > 20, by_check
    assert not mode.endswith("-invariant") or served[0]["logprob_diff"] == 0, served
    assert all(row.get("followed") for row in by_check["instance"] if row["rank"] != 0), by_check
    print(f"  {mode} {world}: greedy logprobs within "
          f"{max(r['logprob_diff'] for r in by_check['greedy']):.3g}, sampled within "
          f"{max(r['logprob_diff'] for r in by_check['sampled']):.3g} of the whole model; "
          f"{by_check['sampled'][0]['steps']} decode steps, "
          f"{by_check['sampled'][0]['preemptions']} preemptions")


def main():
    seed = int(os.environ.get("ENGINE_TP_SEED", random.randrange(1, 2**31)))
    print(f"seed {seed}")
    run(2, seed, "tp")
    run(2, seed, "ep")
    run(4, seed, "ep")
    run(2, seed, "tpep")
    run(2, seed, "ep-invariant")
    run(2, seed, "tp-invariant")
    run(2, seed, "tpep-invariant")
    print("engine_tensor_parallel: ok")


if __name__ == "__main__":
    sys.exit(main())
