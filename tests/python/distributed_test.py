"""The data-parallel learner with real processes over loopback (Gloo):

  equal      an N-rank update equals the 1-rank update of the same global batch: the
             parameters after 2 batches x 2 minibatches (lr 1e-2, so every parameter
             moves by about 1e-2) agree within 1e-5 absolute (1e-3 of the movement) and
             are bitwise identical across ranks; the reduced stats (loss, grad_norm,
             ratios, entropy, token count) agree within 1e-5 relative. RL and SFT, 2 and
             3 ranks, ZeRO-1 on and off, micro-batching on, fewer samples than ranks;
             most gradient buckets are reduced during backward.
  bf16       bf16 weights (FP32 masters, full or ZeRO-1): ranks identical, ZeRO-1 equal
             to plain data parallel, and the update's direction and size match 1 rank;
             gradients all-reduced in bf16 likewise (ZeRO-1 equal plain), and that option
             refused for FP32 weights.
  bf16_reduce  grad_reduce_dtype bfloat16 against the FP32 reduction at the same world
             size: one update (also over several micro-batches, and with ZeRO-1) has the
             same loss and a gradient norm within one bf16 rounding (2^-8 relative); four
             updates (RL, SFT, micro-batching, 3 ranks, expert parallel) keep the ranks
             identical and ZeRO-1 equal to plain data parallel, move the weights from the
             FP32 reduction's (the sum is rounded) by under 1/10 of what losing one sample
             does, and match 1 rank as `bf16` does; with fewer samples than ranks (one
             rank's gradient plus zeros, exact in bf16) they equal the FP32 reduction's;
             a bad value fails naming it.
  resume     ZeRO-1 shards saved and restored by 2 ranks continue bit-exactly.
  errors     a rank started with another WORLD_SIZE, a master nobody serves, and a rank
             out of range fail with messages naming the variable and value.
  run        `lightrl run` with 2 ranks (--nproc 2; ZeRO-1, then also expert_parallel 2),
             stopped and resumed, ends with identical weights on both ranks, and rank 0's
             metrics match a 1-rank run of the same config.
  expert     expert parallelism (2 ranks E 2, 4 ranks E 2 and E 4) against 1 rank as in
             `equal`, with the aux loss counted over all ranks, ZeRO-1, micro-batching,
             empty ranks, token dropping where one process drops the same tokens, a
             resumed run, and bad expert_parallel values.
  expert_sharded  experts sharded (each rank holds only its experts, under expert-TP
             its FFN blocks) on TinyParallelConfig: EP 2, EP 2 x expert-TP 2 and EP 2 with
             2 expert-DP copies against one process holding the whole model: (a) one
             forward and backward gives the same logprobs, aux loss and gradient of every
             parameter shard (summed over the ranks that hold it), with and without token
             dropping; (b) one CISPO update (and one with dropping) leaves every rank's
             shards equal to the slices of the one-process learner's parameters.
  nccl       (only when named; 2 GPUs) `equal` and `bf16` on CUDA with NCCL.
  nccl_expert (only when named; 2 GPUs) `expert` on CUDA: 2 ranks, E 2, NCCL all-to-all.
             With fewer GPUs these are skipped at once, saying how many were found; when
             every case named was skipped the exit status is 77 (CTest SKIP_RETURN_CODE).

Run: LEARNER_DIST_WORKER=build/tests/learner_dist_worker LIGHTRL_BIN=build/rl/lightrl \\
     .venv/bin/python tests/python/distributed_test.py [CASE ...]
DISTRIBUTED_TEST_SEED fixes the seed of the random model and batches.
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np

# The toy arithmetic task's tiny model and tokenizer, as the trainer tests use them.
from rank_workers import free_port, wait_all
from trainer_test import MODEL, TOKENIZER

WORKER = os.environ.get("LEARNER_DIST_WORKER", "build/tests/learner_dist_worker")
BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")
ENV = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
SEED = int(os.environ.get("DISTRIBUTED_TEST_SEED", random.randrange(1, 1 << 30)))
PARAM_ATOL = 1e-5
# On GPUs the batch each process multiplies differs in shape (4 + 3 samples against 7), so
# cuBLAS may pick other kernels and round otherwise, and AdamW's normalised step magnifies
# that where a gradient is near zero: 2.4e-5 at seed 822802104 on 2 H200s. The updates
# themselves are ~1e-2 per weight (median), which a lost or misscaled gradient moves.
PARAM_ATOL_CUDA = 1e-4
STAT_RTOL = 1e-5
STATS = ["loss", "policy_loss", "grad_norm", "clip_fraction", "ratio_mean", "ratio_min",
         "ratio_max", "approx_kl", "entropy", "rollout_logprob_abs_diff", "tokens", "updates",
         "version"]


def run_ranks(world, out, extra, timeout=120, world_of=None):
    """Starts `world` workers; returns [(returncode, stderr)] by rank. `world_of(rank)`
    overrides the world size a rank is told. Retries on a port taken between free_port()
    and the store binding it."""
    for _ in range(3):
        port = free_port()
        procs = []
        for r in range(world):
            told = world_of(r) if world_of else world
            args = [WORKER, "--rank", str(r), "--world", str(told), "--port", str(port),
                    "--seed", str(SEED), "--out", out] + extra
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True, env=ENV))
        results = [(rc, err) for rc, _, err in
                   wait_all(procs, timeout, f"workers did not finish in {timeout} s ({extra})")]
        if not any("address already in use" in e.lower() for _, e in results):
            return results
    return results


def train(world, extra):
    out = tempfile.mkdtemp(prefix="lightrl_dist_")
    try:
        results = run_ranks(world, out, extra)
        for r, (rc, err) in enumerate(results):
            assert rc == 0, f"rank {r} of {world} {extra} failed:\n{err}"
        params = [np.fromfile(os.path.join(out, f"rank{r}.bin"), dtype=np.float32)
                  for r in range(world)]
        stats = [json.load(open(os.path.join(out, f"rank{r}.json"))) for r in range(world)]
        return params, stats, results
    finally:
        shutil.rmtree(out, ignore_errors=True)


def check_equal(reference, world, extra, overlap=True, stats_also=(), atol=PARAM_ATOL):
    ref_params, ref_stats, _ = reference
    params, stats, _ = train(world, extra)
    for r in range(world):
        if overlap:
            # Small buckets (the worker's default 0.0005 MB): most are reduced while
            # backward still runs.
            assert stats[r]["grad_buckets_in_backward"] > stats[r]["grad_buckets"] // 2, \
                f"{world} ranks {extra}: rank {r} overlapped only " \
                f"{stats[r]['grad_buckets_in_backward']} of {stats[r]['grad_buckets']} buckets"
        assert np.array_equal(params[r], params[0]), \
            f"{world} ranks {extra}: rank {r}'s weights differ from rank 0's"
        diff = float(np.abs(params[r] - ref_params[0]).max())
        assert diff <= atol, \
            f"{world} ranks {extra}: weights differ from 1 rank by {diff:.3g} > {atol}"
        for k in STATS + list(stats_also):
            a, b = stats[r][k], ref_stats[0][k]
            assert abs(a - b) <= STAT_RTOL * max(1.0, abs(b)), \
                f"{world} ranks {extra}: stat {k} = {a} on rank {r}, {b} with 1 rank"
    print(f"  {world} ranks {' '.join(extra) or '(defaults)'}: max |dw| vs 1 rank {diff:.2e}")


def case_equal():
    for mode, samples in (("rl", "7"), ("sft", "5")):
        base = ["--mode", mode, "--samples", samples]
        reference = train(1, base)
        # Every parameter moves: the comparison tests the update, not the init.
        init = train(1, base + ["--steps", "0"])[0][0]
        moved = float(np.abs(reference[0][0] - init).mean())
        assert moved > 1e-3, f"{mode}: the update moved the weights by only {moved}"
        print(f"  {mode}: 1 rank moves weights by {moved:.2e} on average")
        check_equal(reference, 2, base)
        check_equal(reference, 2, base + ["--zero1"])
        check_equal(reference, 3, base + ["--zero1", "--max-tokens", "12"])
        check_equal(reference, 3, base + ["--max-tokens", "12", "--bucket-mb", "25"], overlap=False)
    # Fewer samples than ranks: a rank with nothing to train still joins every collective.
    few = ["--samples", "2", "--minibatches", "2"]
    check_equal(train(1, few), 3, few + ["--zero1"], overlap=False)
    check_equal(train(1, few), 3, few, overlap=False)


def case_bf16(device_args=()):
    """bf16 weights with FP32 master weights (full, or ZeRO-1 shards). bf16 compute
    depends on how samples are packed into forwards, so against one process the test
    is on the whole update: same direction and size. One expert, so that a near-tie in
    routing, which bf16 rounding may flip either way, cannot send a token to another
    expert and move the update for reasons that are not data parallelism's."""
    base = ["--dtype", "bfloat16", "--experts", "1"] + list(device_args)
    init = train(1, base + ["--steps", "0"])[0][0].astype(np.float64)
    one = train(1, base)[0][0] - init
    plain = train(2, base)[0]
    zero = train(2, base + ["--zero1"])[0]
    for r in range(2):
        assert np.array_equal(plain[r], plain[0]) and np.array_equal(zero[r], plain[0]), \
            "bf16: ranks, or ZeRO-1 and plain data parallel, differ"
    two = plain[0] - init
    cosine = float(one @ two / np.sqrt((one @ one) * (two @ two)))
    ratio = float(np.linalg.norm(two) / np.linalg.norm(one))
    # bf16 rounding alone, with the samples packed otherwise, gave cosines of 0.9992 to
    # 0.99999 over 22 seeds; a lost rank's gradient or a wrong normaliser gives far less
    # (half the batch: ~0.7; normaliser off by the world size: ratio 2).
    assert cosine > 0.995 and abs(ratio - 1) < 0.02, f"bf16: cosine {cosine}, norm ratio {ratio}"
    print(f"  bf16: update cosine vs 1 rank {cosine:.6f}, norm ratio {ratio:.4f}")
    # Gradients summed in bf16: ranks still identical, and the update differs from the
    # FP32-reduced one by the bf16 roundings of the sums, far less than from 1 rank's.
    reduced = train(2, base + ["--grad-reduce-dtype", "bfloat16"])[0]
    for r in range(2):
        assert np.array_equal(reduced[r], reduced[0]), "bf16 reduce: ranks differ"
    low = reduced[0] - init
    cosine_low = float(low @ two / np.sqrt((low @ low) * (two @ two)))
    cosine_one = float(one @ low / np.sqrt((one @ one) * (low @ low)))
    ratio_low = float(np.linalg.norm(low) / np.linalg.norm(two))
    assert cosine_low > 0.995 and abs(ratio_low - 1) < 0.02 and cosine_one > 0.995, \
        f"bf16 reduce: cosine vs FP32 reduce {cosine_low}, vs 1 rank {cosine_one}, ratio {ratio_low}"
    print(f"  bf16 reduce: update cosine vs FP32 reduce {cosine_low:.6f}, vs 1 rank "
          f"{cosine_one:.6f}, norm ratio {ratio_low:.4f}")
    # With ZeRO-1 the shards step from the same bf16 sums: the same weights, bit for bit.
    reduced_zero = train(2, base + ["--grad-reduce-dtype", "bfloat16", "--zero1"])[0]
    for r in range(2):
        assert np.array_equal(reduced_zero[r], reduced[0]), \
            "bf16 reduce: ZeRO-1 and plain data parallel differ"
    print("  bf16 reduce with ZeRO-1: weights equal plain data parallel's")
    # Refused where it cannot apply, naming the option.
    for extra, words in [(["--dtype", "float32"], "needs bf16 parameters")]:
        out = tempfile.mkdtemp(prefix="lightrl_dist_")
        try:
            args = base + ["--grad-reduce-dtype", "bfloat16"] + extra
            if "--dtype" in extra:
                args = ["--experts", "1", "--grad-reduce-dtype", "bfloat16"] + list(device_args) + extra
            results = run_ranks(2, out, args, timeout=60)
            assert all(rc != 0 for rc, _ in results), f"bf16 reduce with {extra} ran"
            assert any(words in err and "grad_reduce_dtype" in err for _, err in results), \
                f"bf16 reduce with {extra}: no error naming it in {results}"
        finally:
            shutil.rmtree(out, ignore_errors=True)


BF16_REDUCE = ["--grad-reduce-dtype", "bfloat16"]


def update_cosine(a, b):
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def case_bf16_reduce():
    """Against the FP32 reduction at the same world size the ranks' local gradients are
    the same bits (same split, same forwards): only the reduced sum is rounded to bf16,
    once per addition (once for 2 ranks). bf16 weights, and one expert as in `bf16` where
    a case needs no more."""
    base = ["--dtype", "bfloat16", "--experts", "1"]
    # One update, its norm from the reduced gradients: within one rounding of the FP32
    # reduction's (a lost rank's gradient, or a sum divided by the world size, is far
    # off), the loss unchanged. Twelve samples with one sample per forward give every
    # rank several micro-batches.
    one = ["--steps", "1", "--minibatches", "1"]
    for extra in ([], ["--samples", "12", "--max-tokens", "1"], ["--zero1"]):
        args = base + one + extra
        _, fp32, _ = train(2, args)
        params, bf16, _ = train(2, args + BF16_REDUCE)
        assert np.array_equal(params[1], params[0]), f"bf16 reduce {extra}: ranks differ"
        a, b = bf16[0]["grad_norm"], fp32[0]["grad_norm"]
        assert abs(a / b - 1) <= 2.0 ** -8, \
            f"bf16 reduce {extra}: grad norm {a}, FP32 reduction {b} (ratio - 1 = {a / b - 1:.3g})"
        assert abs(bf16[0]["loss"] - fp32[0]["loss"]) <= 1e-6 * max(1.0, abs(fp32[0]["loss"])), \
            f"bf16 reduce {extra}: loss {bf16[0]['loss']}, FP32 reduction {fp32[0]['loss']}"
        print(f"  1 update {' '.join(extra) or '(defaults)'}: grad norm / FP32 reduction's - 1 = "
              f"{a / b - 1:.2e}")
    # Two batches of two updates; `lost` trains on the same batches less one sample.
    # Expert parallelism (4 ranks, 2 EP groups) sums the dense buckets over 4 ranks and
    # keeps the experts' FP32 path (top-2 and Adam's eps as in `expert`).
    for world, args in ((2, ["--mode", "rl", "--samples", "7", "--experts", "1"]),
                        (2, ["--mode", "sft", "--samples", "5", "--experts", "1"]),
                        (2, ["--mode", "rl", "--samples", "12", "--max-tokens", "1", "--experts", "1"]),
                        (3, ["--mode", "rl", "--samples", "7", "--max-tokens", "12", "--experts", "1"]),
                        (4, ["--mode", "rl", "--samples", "7", "--experts", "4", "--expert-parallel",
                             "2", "--top-k", "2", "--adam-eps", "1e-4"])):
        args = ["--dtype", "bfloat16"] + args
        single = without(args, "--expert-parallel") if "--expert-parallel" in args else args
        init = train(1, single + ["--steps", "0"])[0][0].astype(np.float64)
        ref = train(1, single)[0][0] - init
        fp32 = train(world, args)[0][0] - init
        lost = train(world, args + ["--lose-sample"])[0][0] - init
        plain = train(world, args + BF16_REDUCE)[0]
        zero = train(world, args + ["--zero1"] + BF16_REDUCE)[0]
        name = f"bf16 reduce {world} ranks {' '.join(args)}"
        for r in range(world):
            assert np.array_equal(plain[r], plain[0]) and np.array_equal(zero[r], plain[0]), \
                f"{name}: ranks, or ZeRO-1 and plain data parallel, differ"
        two = plain[0] - init
        off, lost_off = float(np.abs(two - fp32).mean()), float(np.abs(lost - fp32).mean())
        # Zero would mean the sum was not rounded to bf16: the option not in effect.
        assert 0 < off <= 0.1 * lost_off, \
            f"{name}: mean |dw| vs FP32 reduction {off:.3g}, a lost sample's {lost_off:.3g}"
        cosine, ratio = update_cosine(ref, two), float(np.linalg.norm(two) / np.linalg.norm(ref))
        assert cosine > 0.995 and abs(ratio - 1) < 0.02, f"{name}: cosine {cosine}, norm ratio {ratio}"
        print(f"  {world} ranks {' '.join(args[2:])}: mean |dw| vs FP32 reduction {off:.2e} "
              f"(a lost sample {lost_off:.2e}); update cosine vs 1 rank {cosine:.6f}")
    # A bad value fails on every rank, naming the option and the value.
    out = tempfile.mkdtemp(prefix="lightrl_dist_")
    try:
        message = 'data_parallel.grad_reduce_dtype must be float32 or bfloat16, got "fp16"'
        for r, (rc, err) in enumerate(run_ranks(2, out, ["--grad-reduce-dtype", "fp16", "--timeout", "20"])):
            assert rc != 0 and message in err, f"rank {r} fp16: {err}"
    finally:
        shutil.rmtree(out, ignore_errors=True)
    # Fewer samples than ranks, one per update: one rank has gradients and the others add
    # zeros, a sum bf16 holds exactly, so the weights are the FP32 reduction's (up to the
    # last bits of the clip norm, summed in another order). Four experts: some get no
    # token and must be skipped by AdamW as the FP32 path skips them.
    few = ["--dtype", "bfloat16", "--experts", "4", "--samples", "2", "--minibatches", "2",
           "--steps", "3"]
    fp32 = train(3, few)[0][0]
    lost_off = float(np.abs(train(3, few + ["--lose-sample"])[0][0] - fp32).mean())
    for extra in ([], ["--zero1"]):
        params = train(3, few + extra + BF16_REDUCE)[0]
        assert all(np.array_equal(p, params[0]) for p in params), f"bf16 reduce few {extra}: ranks differ"
        off = float(np.abs(params[0] - fp32).mean())
        assert off <= 1e-3 * lost_off, \
            f"bf16 reduce few {extra}: mean |dw| vs FP32 reduction {off:.3g}, a lost sample's {lost_off:.3g}"
        print(f"  3 ranks, 2 samples {' '.join(extra)}: mean |dw| vs FP32 reduction {off:.2e} "
              f"(a lost sample {lost_off:.2e})")


def case_resume():
    out = tempfile.mkdtemp(prefix="lightrl_dist_")
    try:
        results = run_ranks(2, out, ["--zero1", "--check-resume"])
        for r, (rc, err) in enumerate(results):
            assert rc == 0 and "resumed update identical" in err, f"rank {r}:\n{err}"
        shards = sorted(f for f in os.listdir(os.path.join(out, "resume")) if "rank" in f)
        assert shards == ["optimizer.pt.rank0-of-2", "optimizer.pt.rank1-of-2"], shards
    finally:
        shutil.rmtree(out, ignore_errors=True)


def case_errors():
    out = tempfile.mkdtemp(prefix="lightrl_dist_")
    try:
        # Rank 1 believes in a world of 3.
        results = run_ranks(2, out, ["--timeout", "10"], world_of=lambda r: 3 if r == 1 else 2)
        assert all(rc != 0 for rc, _ in results), results
        text = "".join(e for _, e in results)
        assert "WORLD_SIZE=3" in text and "WORLD_SIZE=2" in text, text
        # Nobody serves the store.
        port = free_port()
        p = subprocess.run([WORKER, "--rank", "1", "--world", "2", "--port", str(port),
                            "--out", out, "--timeout", "3"], capture_output=True, text=True,
                           env=ENV, timeout=60)
        assert p.returncode != 0 and f"MASTER_ADDR:MASTER_PORT = 127.0.0.1:{port}" in p.stderr, p.stderr
        p = subprocess.run([WORKER, "--rank", "2", "--world", "2", "--out", out],
                           capture_output=True, text=True, env=ENV, timeout=60)
        assert p.returncode != 0 and "rank must be in [0, world_size) = [0, 2), got 2" in p.stderr, \
            p.stderr
    finally:
        shutil.rmtree(out, ignore_errors=True)


# Metrics that depend on the learner alone (not on timing); rank 0 of 2 must log them as
# one process does.
RUN_METRICS_RTOL = 1e-4


def yaml_lines(value, indent=0):
    lines = []
    for key, v in value.items():
        pad = "  " * indent
        if isinstance(v, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(yaml_lines(v, indent + 1))
        elif isinstance(v, bool):
            lines.append(f"{pad}{key}: {'true' if v else 'false'}")
        elif isinstance(v, (int, float)):
            lines.append(f"{pad}{key}: {v!r}")
        else:
            lines.append(f"{pad}{key}: {json.dumps(v)}")
    return lines


def run_config(tmp, name, steps, distributed=None, parallel=None, keep=2, model_path=None,
               model=None):
    task = os.path.join(tmp, "task")
    if not os.path.isdir(task):
        os.makedirs(task)
        with open(os.path.join(task, "model.json"), "w") as f:
            json.dump(model or MODEL, f)
        rng = random.Random(SEED)
        with open(os.path.join(task, "train.jsonl"), "w") as f:
            for _ in range(200):
                a = rng.randrange(10)
                b = rng.randrange(10 - a)
                f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    config = {
        "run": {"name": name, "output_dir": os.path.join(tmp, name), "seed": SEED % 1000,
                "steps": steps},
        "model": {"init_config": os.path.join(task, "model.json"), "init_seed": 5,
                  "tokenizer": TOKENIZER},
        "data": {"train": os.path.join(task, "train.jsonl")},
        "rollout": {"group_size": 4, "prompts_per_step": 6, "max_new_tokens": 4,
                    "early_stop_window": 0},
        "reward": {"kind": "arithmetic"},
        "algorithm": {"loss": "cispo", "max_refill_rounds": 1, "minibatches": 2,
                      "dynamic_sampling": False},
        "optimizer": {"lr": 0.001, "eps": 1e-6, "aux_loss_coef": 0.0},
        "sft": {"steps": 3, "batch_size": 16, "lr": 0.01},
        "checkpoint": {"every": 1, "keep": keep},
        "logging": {"progress": False, "tensorboard": False},
        "distributed": dict({"zero1": True, "bucket_mb": 0.01}, **(distributed or {})),
    }
    if parallel:
        config["parallel"] = parallel
    if model_path:
        config["model"] = {"path": model_path, "tokenizer": TOKENIZER}
    path = os.path.join(tmp, name + ".yaml")
    with open(path, "w") as f:
        f.write("\n".join(yaml_lines(config)) + "\n")
    return path, config["run"]["output_dir"]


def lightrl_run(*args):
    env = {k: v for k, v in ENV.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    for _ in range(3):
        proc = subprocess.run([BIN, "run", *args], capture_output=True, text=True, timeout=240,
                              env=env)
        # --nproc's free port was taken before rank 0's store bound it: nothing ran yet.
        if "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, f"lightrl run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stderr


def metrics(run_dir):
    rows = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows.setdefault(row["step"], {}).update(row)
    return rows


def case_run():
    tmp = tempfile.mkdtemp(prefix="lightrl_dist_run_")
    try:
        one, one_dir = run_config(tmp, "one", steps=3)
        lightrl_run("--config", one)
        m1 = metrics(one_dir)
        # Two ranks, interrupted after step 2 and resumed: ZeRO-1 shards (and with expert
        # parallelism the experts' state) go through a checkpoint and back.
        for name, distributed, saved in (
                ("two", {}, ["optimizer.pt.rank0-of-2", "optimizer.pt.rank1-of-2"]),
                ("ep", {"expert_parallel": 2},
                 ["optimizer.pt.experts0-of-2", "optimizer.pt.experts1-of-2",
                  "optimizer.pt.rank0-of-2", "optimizer.pt.rank1-of-2"])):
            two, two_dir = run_config(tmp, name, steps=2, distributed=distributed)
            lightrl_run("--config", two, "--nproc", "2")
            two, _ = run_config(tmp, name, steps=3, distributed=distributed)
            err = lightrl_run("--config", two, "--nproc", "2", "--resume")
            sums = {}
            for line in err.splitlines():
                if " weights checksum " in line:
                    rank = int(line.split("rank ")[1].split()[0])
                    sums[rank] = line.split()[-1]
            assert len(sums) == 2 and sums[0] == sums[1], f"{name}: weights checksums {sums}:\n{err}"
            assert "weights identical on all 2 learner ranks" in err, err
            latest = open(os.path.join(two_dir, "checkpoints", "latest")).read().strip()
            shards = sorted(f for f in os.listdir(os.path.join(two_dir, "checkpoints", latest))
                            if f.startswith("optimizer.pt"))
            assert shards == saved, (name, shards)
            compared = compare_run_metrics(name, one_dir, two_dir)
            print(f"  {name}: {compared} metrics of {len(m1)} steps agree; ranks' weights {sums[0]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Two runs sample alike while their engines' logits agree to a few ulps, except where two
# tokens' probabilities tie: the sampler orders tokens by probability, so weights an ulp
# apart (from a reduction in another order) can swap two tied tokens and the run goes on
# with the other. A divergence must be such a tie: the two runs' sampled tokens at the
# first differing place have logprobs this close. Updates in another reduction order can
# also move the weights by more than ulps (Adam turns a gradient entry whose terms cancel
# to rounding into a step of either sign): where the two runs' logprobs of the same tokens
# already differ by more than this within the step, the sampler's cumulative sums differ
# too and any sampled token may change, so a divergence there is not held to a tie.
SAMPLING_TIE_ATOL = 1e-5


def rollout_groups(run_dir):
    out = os.path.join(run_dir, "rollouts.export.jsonl")
    p = subprocess.run([BIN, "rollouts", "export", "--rollouts", os.path.join(run_dir, "rollouts"),
                        "--output", out], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    with open(out) as f:
        return [json.loads(line) for line in f]


def first_sampling_tie(name, dir_a, dir_b):
    """The metrics step (1-based) whose rollouts first differ between two runs, None when
    all agree; asserts the difference is a sampling tie, unless the runs' logprobs of the
    same tokens in that step already differ by more than SAMPLING_TIE_ATOL."""
    pairs = list(zip(rollout_groups(dir_a), rollout_groups(dir_b)))
    drift = {}  # step -> max |logprob difference| over the tokens both runs sampled alike
    for ga, gb in pairs:
        assert (ga["step"], ga["group_id"], ga["prompt_tokens"]) == \
            (gb["step"], gb["group_id"], gb["prompt_tokens"]), (name, ga["group_id"], gb["group_id"])
        for sa, sb in zip(ga["samples"], gb["samples"]):
            for t, (a, b) in enumerate(zip(sa["tokens"], sb["tokens"])):
                if a != b:
                    break
                drift[ga["step"]] = max(drift.get(ga["step"], 0.0),
                                        abs(sa["logprobs"][t] - sb["logprobs"][t]))
    for ga, gb in pairs:
        for i, (sa, sb) in enumerate(zip(ga["samples"], gb["samples"])):
            for t, (a, b) in enumerate(zip(sa["tokens"], sb["tokens"])):
                if a == b:
                    continue
                la, lb = sa["logprobs"][t], sb["logprobs"][t]
                moved = drift.get(ga["step"], 0.0)
                assert abs(la - lb) <= SAMPLING_TIE_ATOL or moved > SAMPLING_TIE_ATOL, \
                    (f"{name}: {ga['group_id']} sample {i} token {t}: one run sampled {a} "
                     f"(logprob {la}), the other {b} (logprob {lb}): not a tie, while the "
                     f"step's common tokens agree within {moved:.2g}")
                why = (f"tied at logprob {la}" if abs(la - lb) <= SAMPLING_TIE_ATOL else
                       f"the step's common tokens' logprobs {moved:.2g} apart")
                print(f"  {name}: {ga['group_id']} sample {i} token {t} sampled {a} or {b}, "
                      f"{why}; RL metrics from step {ga['step'] + 1} on not compared")
                return ga["step"] + 1
            assert len(sa["tokens"]) == len(sb["tokens"]), (name, ga["group_id"], i)
    return None


def compare_run_metrics(name, dir_a, dir_b):
    """The learner's metrics of every step of two runs within RUN_METRICS_RTOL; where a
    sampling tie made the rollouts differ, the RL metrics of that step and after are left
    out (SFT runs before the first rollout)."""
    m1, m2 = metrics(dir_a), metrics(dir_b)
    assert sorted(m1) == sorted(m2), (name, sorted(m1), sorted(m2))
    tie = first_sampling_tie(name, dir_a, dir_b)
    compared = 0
    for step in m1:
        for key, a in m1[step].items():
            # loss/aux is measured per forward, and the ranks' forwards hold other
            # samples than one process's (its weight is 0 here).
            if not key.startswith(("loss/", "is/", "optim/", "reward/", "policy/", "sft/")) \
                    or key == "loss/aux":
                continue
            if tie is not None and step >= tie and not key.startswith("sft/"):
                continue
            b = m2[step][key]
            assert abs(a - b) <= RUN_METRICS_RTOL * max(1.0, abs(a)), \
                f"{name}: step {step} {key}: 1 rank {a}, several ranks {b}"
            compared += 1
    assert compared > 0, name
    return compared


def token_logprobs(model_dir, tokens_path, tmp):
    out = os.path.join(tmp, "logprobs.out.jsonl")
    p = subprocess.run([BIN, "logprobs", "--model", model_dir, "--input", tokens_path,
                        "--output", out], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    with open(out) as f:
        return [json.loads(line)["logprobs"] for line in f]


def random_token_file(tmp, vocab_size):
    """Four random token sequences (3 to 11 tokens) for `lightrl logprobs`; returns the path."""
    rng = random.Random(SEED)
    path = os.path.join(tmp, "tokens.jsonl")
    with open(path, "w") as f:
        for _ in range(4):
            f.write(json.dumps({"tokens": [rng.randrange(vocab_size)
                                           for _ in range(rng.randrange(3, 12))]}) + "\n")
    return path


def check_sharded_run(name, tmp, one_dir, two_dir, parallel, nproc, shards, tokens):
    """A sharded run's latest checkpoint: the index and exactly `shards` (no whole-model
    file), its logprobs of `tokens` those of the one-process run's checkpoint of the same
    step; then the run resumed for a third step ends with identical replicated weights and
    every step's metrics those of one process. Returns (latest, file names, metrics
    compared)."""
    ckpts = os.path.join(two_dir, "checkpoints")
    latest = open(os.path.join(ckpts, "latest")).read().strip()
    files = sorted(os.listdir(os.path.join(ckpts, latest)))
    assert "model.sharded.index.json" in files and "model.safetensors" not in files, files
    assert [f for f in files if f.startswith("model-")] == sorted(shards), files
    ours = token_logprobs(os.path.join(ckpts, latest), tokens, tmp)
    ref = token_logprobs(os.path.join(one_dir, "checkpoints", latest), tokens, tmp)
    for a, b in zip(ours, ref):
        assert a[0] is None and b[0] is None
        np.testing.assert_allclose(a[1:], b[1:], rtol=0, atol=1e-4,
                                   err_msg=f"{name}: logprobs of {latest}")
    three, _ = run_config(tmp, name, steps=3, parallel=parallel)
    err = lightrl_run("--config", three, "--nproc", str(nproc), "--resume")
    assert "replicated weights identical on all" in err, err
    return latest, files, compare_run_metrics(name, one_dir, two_dir)


def case_run_sharded():
    """`lightrl run` with sharded experts (parallel.ep 2 on 2 ranks; ep 2 x expert_tp 2 on
    4): each rank trains only its experts, rank 0 generates with the gathered whole model.
    Every step's learner metrics equal one process's, the checkpoints are sharded (index and
    one file per coordinate) and score tokens as one process's, a resume continues, a
    checkpoint of one layout starts a run of another as it starts one process, and resumed
    under another layout it refuses the optimizer state by name."""
    tmp = tempfile.mkdtemp(prefix="lightrl_dist_sharded_")
    try:
        one, one_dir = run_config(tmp, "one", steps=3, keep=4)
        lightrl_run("--config", one)
        m1 = metrics(one_dir)
        tokens = random_token_file(tmp, MODEL["vocab_size"])
        for name, parallel, nproc in (("ep", {"ep": 2}, 2),
                                      ("ep_etp", {"ep": 2, "expert_tp": 2}, 4)):
            two, two_dir = run_config(tmp, name, steps=2, parallel=parallel)
            err = lightrl_run("--config", two, "--nproc", str(nproc))
            etp = parallel.get("expert_tp", 1)
            layout = (f"{nproc} learner processes (data-parallel {nproc // (2 * etp)} x "
                      f"expert-parallel 2 x expert-TP {etp}, experts sharded)")
            assert layout in err, err
            shards = [f"model-tp0of1-ep{q}of2-etp{t}of{etp}.safetensors"
                      for q in range(2) for t in range(etp)]
            latest, _, compared = check_sharded_run(name, tmp, one_dir, two_dir, parallel, nproc,
                                                    shards, tokens)
            print(f"  {name} ({nproc} ranks): {compared} metrics of {len(m1)} steps agree "
                  f"(resumed after step 2); {latest} holds {len(shards)} shard files")
        # Generating on the ranks' shards (rollout.sharded_engine) in FP32: ep 2 x
        # expert_tp 2 on 4 ranks (one instance whose ranks each run their block of the
        # batch's MoE rows through their experts' FFN blocks) and on 8 (two instances, each
        # its share of the batch).
        for name, nproc in (("ep_etp_engine", 4), ("ep_etp_dp_engine", 8)):
            cfg, out = run_config(tmp, name, steps=3, parallel={"ep": 2, "expert_tp": 2})
            err = lightrl_run("--config", cfg, "--nproc", str(nproc), *SHARDED_ENGINE)
            copies = "1 copy" if nproc == 4 else f"{nproc // 4} copies"
            assert f"engines on the {nproc} ranks' shards, {copies} of a 4-rank instance" in err, err
            compared = compare_run_metrics(name, one_dir, out)
            print(f"  {name} ({nproc} ranks, generating on the shards): {compared} metrics of "
                  f"{len(m1)} steps agree with one process")
        # The ep 2 run's checkpoint as the model of an ep 2 x expert_tp 2 run: each rank
        # reads its blocks of the other layout's files, and the run trains as one process
        # does from that checkpoint.
        start = os.path.join(tmp, "ep", "checkpoints", latest)
        runs = []
        for name, parallel, nproc in (("from_ep_one", None, 1),
                                      ("from_ep_etp", {"ep": 2, "expert_tp": 2}, 4)):
            cfg, out = run_config(tmp, name, steps=1, parallel=parallel, model_path=start)
            lightrl_run("--config", cfg, *(["--nproc", str(nproc)] if nproc > 1 else []))
            runs.append(out)
        compared = compare_run_metrics("from_ep", *runs)
        print(f"  {latest} of ep 2 starts ep 2 x expert_tp 2 on 4 ranks: {compared} metrics "
              "agree with one process")
        # Resumed under another layout of the same 4 ranks (ep 2 with two expert-DP copies),
        # the weights load but the optimizer state needs the layout it was written with.
        other, _ = run_config(tmp, "ep_etp", steps=4, parallel={"ep": 2})
        p = subprocess.run([BIN, "run", "--config", other, "--nproc", "4", "--resume"],
                           capture_output=True, text=True, timeout=240, env=ENV)
        assert p.returncode != 0, p.stderr
        message = ("optimizer.pt.experts0-of-2 does not exist: this learner runs "
                   "expert_parallel 2 x expert_tp 1")
        assert message in p.stderr, p.stderr
        print(f"  ep x expert_tp checkpoint resumed as ep 2 x 2 copies: {message} ...")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_invariant_runs(name, runs, model=None):
    """`runs`: (name, parallel, nproc, layout line[, extra arguments]) of `lightrl run`s in
    the batch-invariant mode, the first one process: every step's mismatch metrics are exactly 0 and the
    learner's metrics equal the first run's."""
    tmp = tempfile.mkdtemp(prefix=f"lightrl_dist_{name}_")
    try:
        dirs = []
        for run_name, parallel, nproc, layout, *extra in runs:
            cfg, out = run_config(tmp, run_name, steps=3, parallel=parallel,
                                  **({"model": model} if model else {}))
            with open(cfg, "a") as f:
                f.write("numerics:\n  batch_invariant: true\n")
            err = lightrl_run("--config", cfg, *(["--nproc", str(nproc)] if nproc > 1 else []),
                              *(extra[0] if extra else []))
            assert layout in err, err
            rows = [metrics(out)[s] for s in sorted(metrics(out))]
            mismatch = [(r["policy/train_infer_logprob_abs_diff_max"], r["policy/train_infer_kl"])
                        for r in rows if "policy/train_infer_logprob_abs_diff_max" in r]
            assert len(mismatch) == 3 and all(m == (0.0, 0.0) for m in mismatch), (run_name, mismatch)
            dirs.append(out)
        return sum(compare_run_metrics(name, dirs[0], d) for d in dirs[1:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def case_run_invariant_ep():
    """`lightrl run` with numerics.batch_invariant and the experts sharded over 2 ranks
    (parallel.ep 2), and over 2 x 2 with each expert's FFN width split (expert_tp 2): every
    step's learner logprobs equal rank 0's engine's bit for bit (the mismatch metrics are
    exactly 0) as in one process, and the learner's metrics equal one process's in the
    mode."""
    compared = check_invariant_runs("invariant_ep", [
        ("one", None, 1, ""),
        ("ep", {"ep": 2}, 2, "expert-parallel 2 x expert-TP 1, experts sharded"),
        ("ep_etp", {"ep": 2, "expert_tp": 2}, 4, "expert-parallel 2 x expert-TP 2, experts sharded"),
        ("ep_engine", {"ep": 2}, 2, "engines on the 2 ranks' shards, 1 copy of a 2-rank instance",
         SHARDED_ENGINE),
        ("ep_dp_engine", {"ep": 2}, 4, "engines on the 4 ranks' shards, 2 copies of a 2-rank "
         "instance", SHARDED_ENGINE),
        ("ep_etp_engine", {"ep": 2, "expert_tp": 2}, 4, "engines on the 4 ranks' shards, 1 copy "
         "of a 4-rank instance", SHARDED_ENGINE)])
    print(f"  ep 2 and ep 2 x expert_tp 2 in the batch-invariant mode, and generating on the "
          f"ranks' shards with ep 2 on 2 and on 4 ranks (2 instances) and ep 2 x expert_tp 2 on "
          f"4: mismatch 0 at all 3 steps, {compared} metrics agree with one process")


def case_run_invariant_tp():
    """The same with the attention and vocabulary split over 2 ranks (parallel.tp 2), and
    with tp 2 x ep 2 on 4 ranks (sequence-parallel, each rank its block of the tokens between
    the attention blocks): each rank's heads and vocabulary rows, the row-parallel steps
    computed whole on every rank over the gathered heads, so the learner's logprobs are the
    one-process mode's bits."""
    compared = check_invariant_runs("invariant_tp", [
        ("one", None, 1, ""),
        ("tp", {"tp": 2}, 2, "tensor-parallel 2 x data-parallel 1, weights sharded"),
        ("tp_ep", {"tp": 2, "ep": 2, "sequence_parallel": True}, 4,
         "tensor-parallel 2 (sequence-parallel) x data-parallel 2; experts: expert-parallel 2 "
         "x expert-TP 1, weights sharded"),
        ("tp_engine", {"tp": 2}, 2, "engines on the 2 ranks' shards, 1 copy of a 2-rank instance",
         SHARDED_ENGINE),
        ("tp_ep_engine", {"tp": 2, "ep": 2, "sequence_parallel": True}, 2,
         "engines on the 2 ranks' shards, 1 copy of a 2-rank instance", SHARDED_ENGINE),
        ("tp_dp_engine", {"tp": 2}, 4,
         "engines on the 4 ranks' shards, 2 copies of a 2-rank instance", SHARDED_ENGINE)],
        model=TP_MODEL)
    print(f"  tp 2, and tp 2 x ep 2 with sequence parallelism, in the batch-invariant mode, and "
          f"generating on the ranks' shards with tp 2, tp 2 x ep 2 (over the same 2 ranks) and "
          f"tp 2 x dp 2 (2 instances, each its share of the batch): mismatch 0 at all 3 steps, "
          f"{compared} metrics agree with one process")
    # Attention data parallelism: tp 2 x ep 4 on 4 ranks, the EP group of 4 over both TP
    # groups; each TP group's engine generates its share of the batch and every MoE block
    # dispatches both groups' tokens over the 4 ranks, the engines stepping together.
    compared = check_invariant_runs("invariant_tp_dp", [
        ("one", None, 1, ""),
        ("tp_ep4_engine", {"tp": 2, "ep": 4, "sequence_parallel": True}, 4,
         "engines on the 4 ranks' shards, 2 copies of a 2-rank instance, attention "
         "data-parallel in EP groups of 4", SHARDED_ENGINE)],
        model=EP4_MODEL)
    print(f"  tp 2 x ep 4 on 4 ranks generating on the shards, attention data-parallel over "
          f"the 2 TP groups of each EP group: mismatch 0 at all 3 steps, {compared} metrics "
          f"agree with one process")



# rollout.sharded_engine: rank 0's engine on the ranks' shards (an instance of the learner's
# ranks), no whole model anywhere and nothing gathered after an update.
SHARDED_ENGINE = ["--set", "rollout.sharded_engine=true"]


# MODEL with its heads and vocabulary (padded by one row past the tokenizer's) split in two.
TP_MODEL = dict(MODEL, vocab_size=258, num_key_value_heads=2)
# TP_MODEL with experts for an EP group of 4.
EP4_MODEL = dict(TP_MODEL, num_local_experts=4)


def case_run_tp():
    """`lightrl run` with tensor parallelism: tp 2 on 2 ranks, tp 2 x dp 2 on 4 (ZeRO-1
    over each DP group), tp 2 with sequence parallelism on 2, and tp 2 x ep 2 (sequence-
    parallel) on 4, each rank holding its EP rank's experts only. Each rank trains its TP shard of every dense weight, rank 0
    generates with the gathered whole model. Every step's learner metrics equal one
    process's, the checkpoints are sharded by TP rank and score tokens as one process's,
    each TP rank writes its optimizer state and a resume continues from it, and resumed
    under another layout the run refuses that state by name."""
    tmp = tempfile.mkdtemp(prefix="lightrl_dist_tp_")
    try:
        one, one_dir = run_config(tmp, "one", steps=3, keep=4, model=TP_MODEL)
        lightrl_run("--config", one)
        m1 = metrics(one_dir)
        tokens = random_token_file(tmp, TP_MODEL["vocab_size"])
        tp, sp = {"tp": 2}, {"tp": 2, "sequence_parallel": True}
        per_tp = ["optimizer.pt.tp0-of-2", "optimizer.pt.tp1-of-2"]
        per_rank = [f"optimizer.pt.tp{t}-of-2.rank{d}-of-2" for t in range(2) for d in range(2)]
        tp_ep = {"tp": 2, "ep": 2, "sequence_parallel": True}
        per_expert = per_rank + ["optimizer.pt.experts0-of-2", "optimizer.pt.experts1-of-2"]
        for name, nproc, parallel, state in (("tp", 2, tp, per_tp), ("tp_dp", 4, tp, per_rank),
                                             ("tp_sp", 2, sp, per_tp),
                                             ("tp_ep", 4, tp_ep, per_expert)):
            two, two_dir = run_config(tmp, name, steps=2, parallel=parallel)
            err = lightrl_run("--config", two, "--nproc", str(nproc))
            seq = " (sequence-parallel)" if parallel.get("sequence_parallel") else ""
            ep = parallel.get("ep", 1)
            experts = f"; experts: expert-parallel {ep} x expert-TP 1" if ep > 1 else ""
            layout = (f"{nproc} learner processes (tensor-parallel 2{seq} x data-parallel "
                      f"{nproc // 2}{experts}, weights sharded)")
            assert layout in err, err
            shards = [f"model-tp{t}of2-ep{q}of{ep}-etp0of1.safetensors"
                      for t in range(2) for q in range(ep)]
            latest, files, compared = check_sharded_run(name, tmp, one_dir, two_dir, parallel,
                                                        nproc, shards, tokens)
            assert [f for f in files if f.startswith("optimizer.pt")] == sorted(state), files
            print(f"  {name} ({nproc} ranks): {compared} metrics of {len(m1)} steps agree "
                  f"(resumed after step 2); {latest} holds {sorted(state)}")
        # The tp 2 run's checkpoint as the model of a one-process run trains as one process
        # does from the same weights.
        start = os.path.join(tmp, "tp", "checkpoints", latest)
        runs = []
        for name, nproc in (("from_tp_one", 1), ("from_tp_dp", 4)):
            cfg, out = run_config(tmp, name, steps=1, model_path=start,
                                  parallel={"tp": 2} if nproc > 1 else None)
            lightrl_run("--config", cfg, *(["--nproc", str(nproc)] if nproc > 1 else []))
            runs.append(out)
        compared = compare_run_metrics("from_tp", *runs)
        print(f"  {latest} of tp 2 starts one process and tp 2 x dp 2: {compared} metrics agree")
        # Generating on the ranks' shards (rollout.sharded_engine), FP32 outside the
        # batch-invariant mode: tp 2 on 2 ranks and tp 2 x dp 2 on 4 (two instances, each its
        # share of the batch) log one process's metrics within the tolerance.
        for name, nproc in (("tp_engine", 2), ("tp_dp_engine", 4)):
            cfg, out = run_config(tmp, name, steps=3, parallel={"tp": 2})
            err = lightrl_run("--config", cfg, "--nproc", str(nproc), *SHARDED_ENGINE)
            assert f"engines on the {nproc} ranks' shards" in err, err
            compared = compare_run_metrics(name, one_dir, out)
            print(f"  {name} ({nproc} ranks, generating on the shards): {compared} metrics of "
                  f"{len(m1)} steps agree with one process")
        # Attention data parallelism in FP32: tp 2 x ep 4 on 4 ranks (each TP group's engine
        # its share, the MoE blocks over the EP group of 4) against one process of the same
        # 4-expert model.
        ep4 = os.path.join(tmp, "ep4")  # its own task folder, with the 4-expert model
        ep4_one, ep4_dir = run_config(ep4, "one", steps=3, model=EP4_MODEL)
        lightrl_run("--config", ep4_one)
        cfg, out = run_config(ep4, "tp_ep4_engine", steps=3, model=EP4_MODEL,
                              parallel={"tp": 2, "ep": 4, "sequence_parallel": True})
        err = lightrl_run("--config", cfg, "--nproc", "4", *SHARDED_ENGINE)
        assert "2 copies of a 2-rank instance, attention data-parallel in EP groups of 4" in err, err
        compared = compare_run_metrics("tp_ep4_engine", ep4_dir, out)
        print(f"  tp_ep4_engine (4 ranks, attention data-parallel): {compared} metrics agree "
              f"with one process")
        # Resumed as tp 2 x dp 2, the tp 2 run's weights load but its optimizer state (no
        # ZeRO-1 shards) is refused by name.
        other, _ = run_config(tmp, "tp", steps=4, parallel={"tp": 2})
        p = subprocess.run([BIN, "run", "--config", other, "--nproc", "4", "--resume"],
                           capture_output=True, text=True, timeout=240, env=ENV)
        assert p.returncode != 0, p.stderr
        # Whichever rank stops first says it, of its own file.
        message = re.search(r"optimizer\.pt\.tp(\d)-of-2\.rank\d-of-2 does not exist: this "
                            r"learner at tp rank (\d) of 2 runs ZeRO-1 over 2 data-parallel "
                            r"ranks and the checkpoint holds 2 tensor-parallel state files "
                            r"\(optimizer\.pt\.tp0-of-2, \.\.\.\)", p.stderr)
        assert message and message.group(1) == message.group(2), p.stderr
        print(f"  tp 2 checkpoint resumed as tp 2 x dp 2: {message.group(0)[:70]} ...")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def case_nccl():
    """The same comparison on GPUs with NCCL (CUDA builds, 2 GPUs; CTest label gpu):
    rank r on cuda:r against one process on cuda:0."""
    for mode, samples in (("rl", "7"), ("sft", "5")):
        base = ["--device", "cuda", "--mode", mode, "--samples", samples]
        reference = train(1, base)
        check_equal(reference, 2, base, atol=PARAM_ATOL_CUDA)
        check_equal(reference, 2, base + ["--zero1", "--max-tokens", "12"], atol=PARAM_ATOL_CUDA)
    # bf16 weights on CUDA: the buckets are filled by the gather kernel (FP32 reduction)
    # or by one concatenation (bf16 reduction).
    case_bf16(["--device", "cuda"])


def without(args, flag):
    """`args` less `flag` and its value."""
    i = args.index(flag)
    return args[:i] + args[i + 2:]


def check_expert(device_args, layouts, drop_layouts):
    """Expert parallelism against one process: `layouts` are (world, extra) on batches as
    `equal` draws them; `drop_layouts` (world, extra) drop tokens (capacity 0.75) on batches
    of `world` samples per update in falling length, so that rank r trains sample r and
    the ranks' tokens in rank order are the update's samples in order, as one process
    packs them.
    Top-2 routing, so that the task loss reaches the routers too (top-1's one weight is
    renormalised to 1). Adam's eps is 1e-4: the aux loss's gradient makes many small
    gradients of cancelling terms, and Adam turns the rounding of a gradient near eps into
    lr / eps times as much weight (with eps 1e-6 one of 40 seeds ended 2e-5 off one
    process, with 1e-5 one of 80 6e-6, and that seed 4e-7 with 1e-4); the typical gradient
    (1e-2) still moves its weight by about lr."""
    aux = ["--aux-coef", "0.05"]
    device_args = device_args + ["--top-k", "2", "--adam-eps", "1e-4"]
    for mode, samples in (("rl", "7"), ("sft", "5")):
        base = device_args + ["--mode", mode, "--samples", samples]
        reference = train(1, base + aux)
        init = train(1, base + aux + ["--steps", "0"])[0][0]
        moved = float(np.abs(reference[0][0] - init).mean())
        assert moved > 1e-3, f"{mode}: the update moved the weights by only {moved}"
        # Every MoE layer's aux loss is counted over all ranks' tokens: value and gradient.
        for world, extra in layouts:
            check_equal(reference, world, base + aux + extra, overlap=False, stats_also=["aux_loss"])
        # Micro-batching, so ranks run different numbers of forwards (the short ones run
        # empty ones); the aux loss is off, since one process's forwards hold other samples.
        micro = base + ["--max-tokens", "12"]
        world, extra = layouts[-1]
        check_equal(train(1, micro), world, micro + extra, overlap=False)
    for world, extra in drop_layouts:
        # RL: 2 minibatches of `world` samples; SFT trains the whole batch in one update.
        for mode, samples in (("rl", 2 * world), ("sft", world)):
            drop = device_args + ["--mode", mode, "--samples", str(samples), "--minibatches", "2",
                                  "--sorted", "--capacity", "0.75"] + aux
            reference = train(1, drop)
            undropped = train(1, without(drop, "--capacity"))[0][0]
            dropped = float(np.abs(reference[0][0] - undropped).max())
            # Ten times the tolerance of the equality checks: dropping visibly moves the update.
            assert dropped > 1e-4, f"{mode}: capacity 0.75 changed the update by only {dropped}"
            check_equal(reference, world, drop + extra, overlap=False, stats_also=["aux_loss"])


def case_expert():
    check_expert([], [(2, ["--expert-parallel", "2"]), (4, ["--expert-parallel", "4"]),
                      (4, ["--expert-parallel", "2", "--zero1"])],
                 [(2, ["--expert-parallel", "2", "--zero1"]), (4, ["--expert-parallel", "2"])])
    # Fewer samples than ranks: ranks without tokens still serve their experts.
    few = ["--samples", "2", "--minibatches", "2", "--aux-coef", "0.05", "--top-k", "2",
           "--adam-eps", "1e-4"]
    check_equal(train(1, few), 4, few + ["--expert-parallel", "4"], overlap=False,
                stats_also=["aux_loss"])
    # The experts' optimizer state goes through a checkpoint and back, with and without
    # ZeRO-1 for the rest, one EP group and two.
    for world, extra in ((2, ["--expert-parallel", "2"]), (4, ["--expert-parallel", "2", "--zero1"])):
        out = tempfile.mkdtemp(prefix="lightrl_dist_")
        try:
            results = run_ranks(world, out, extra + ["--check-resume"])
            for r, (rc, err) in enumerate(results):
                assert rc == 0 and "resumed update identical" in err, f"rank {r} {extra}:\n{err}"
            saved = sorted(f for f in os.listdir(os.path.join(out, "resume")) if "experts" in f)
            assert saved == ["optimizer.pt.experts0-of-2", "optimizer.pt.experts1-of-2"], saved
        finally:
            shutil.rmtree(out, ignore_errors=True)
    # Bad values fail on every rank, naming the option and both numbers.
    out = tempfile.mkdtemp(prefix="lightrl_dist_")
    try:
        for world, extra, message in (
                (2, ["--expert-parallel", "3"],
                 "data_parallel.expert_parallel = 3 must divide the learner's world size 2"),
                (2, ["--expert-parallel", "2", "--experts", "3"],
                 "data_parallel.expert_parallel = 2 must divide the model's num_local_experts 3"),
                (1, ["--expert-parallel", "2"],
                 "data_parallel.expert_parallel = 2 must divide the learner's world size 1"),
                (1, ["--expert-parallel", "0"],
                 "data_parallel.expert_parallel must be >= 1, got 0")):
            results = run_ranks(world, out, extra + ["--timeout", "20"])
            for r, (rc, err) in enumerate(results):
                assert rc != 0 and message in err, f"rank {r} {extra}: {err}"
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print("  expert_parallel errors: as expected")


def load_named(out, rank, what):
    """Rank `rank`'s `what` file (bin, grad.bin) as {name: (array, block)}, split by its
    names file (module order, local shapes; block: dim, parts, index of ShardOf)."""
    names = json.load(open(os.path.join(out, f"rank{rank}.names.json")))
    flat = np.fromfile(os.path.join(out, f"rank{rank}.{what}"), dtype=np.float32)
    named, offset = {}, 0
    for n in names:
        size = int(np.prod(n["shape"]))
        named[n["name"]] = (flat[offset:offset + size].reshape(n["shape"]), n)
        offset += size
    assert offset == flat.size, f"rank {rank}: {flat.size} values for {offset} parameter values"
    return named


def run_named(world, extra, whats):
    """Runs `world` workers; returns, by rank, {what: named arrays} plus "logp" and "json"."""
    out = tempfile.mkdtemp(prefix="lightrl_dist_")
    try:
        results = run_ranks(world, out, extra)
        for r, (rc, err) in enumerate(results):
            assert rc == 0, f"rank {r} of {world} {extra} failed:\n{err}"
        ranks = []
        for r in range(world):
            got = {w: load_named(out, r, w) for w in whats}
            logp = os.path.join(out, f"rank{r}.logp.bin")
            if os.path.exists(logp):
                got["logp"] = np.fromfile(logp, dtype=np.float32)
            got["json"] = json.load(open(os.path.join(out, f"rank{r}.json")))
            ranks.append(got)
        return ranks
    finally:
        shutil.rmtree(out, ignore_errors=True)


def block_of(full, block):
    """The ShardOf block of a whole tensor."""
    if block["dim"] < 0 or block["parts"] == 1:
        return full
    return np.split(full, block["parts"], axis=block["dim"])[block["index"]]


def is_expert(name):
    return ".block_sparse_moe.experts." in name


def check_sharded_sums(ref, ranks, what, world, extra, atol):
    """Every parameter shard's values summed over the ranks holding it (the gradient of
    each rank's part of the loss) equal the one-process values' slice; dense parameters
    are held by every rank, each expert shard by its expert-DP copies."""
    sums = {}
    for r, got in enumerate(ranks):
        for name, (arr, block) in got[what].items():
            key = (name, block["dim"], block["parts"], block["index"])
            sums[key] = sums.get(key, 0) + arr.astype(np.float64)
    worst = 0.0
    for (name, dim, parts, index), total in sums.items():
        want = block_of(ref[name][0], {"dim": dim, "parts": parts, "index": index})
        scale = max(1.0, float(np.abs(want).max()))
        diff = float(np.abs(total - want).max())
        worst = max(worst, diff / scale)
        assert diff <= atol * scale, \
            f"{world} ranks {extra}: {what} of {name} block {index}/{parts} (dim {dim}) " \
            f"differs from 1 process by {diff:.3g} (largest magnitude {scale:.3g})"
    # Every expert tensor of the model is covered by the ranks' shards exactly.
    for name, (full, _) in ref.items():
        if not is_expert(name):
            continue
        covered = sum(int(np.prod(block_of(full, {"dim": d, "parts": p, "index": i}).shape))
                      for (n, d, p, i) in sums if n == name)
        assert covered == full.size, f"{world} ranks {extra}: {name} covered {covered} of {full.size}"
    return worst


SHARDED_LAYOUTS = [
    (2, ["--expert-parallel", "2", "--shard-experts"]),
    (4, ["--expert-parallel", "2", "--expert-tp", "2"]),
    (4, ["--expert-parallel", "2", "--shard-experts"]),
]


def case_expert_sharded():
    base = ["--model", "parallel", "--aux-coef", "0.05"]
    # (a) One forward and backward over 8 documents, split between the ranks in order;
    # then 2 documents on 4 ranks, so that ranks 0 and 2 join every collective (dispatch,
    # expert-TP gather and reduce-scatter, their backward) with no tokens.
    for capacity, samples, layouts in (([], "8", SHARDED_LAYOUTS),
                                       (["--capacity", "0.75"], "8", SHARDED_LAYOUTS),
                                       ([], "2", SHARDED_LAYOUTS[1:])):
        grad = base + ["--mode", "grad", "--samples", samples] + capacity
        ref = run_named(1, grad, ["grad.bin"])[0]
        if capacity:
            undropped = run_named(1, without(grad, "--capacity"), ["grad.bin"])[0]
            moved = float(np.abs(undropped["logp"] - ref["logp"]).max())
            # Ten times the tolerance below: the dropping is visible in the logprobs.
            assert moved > 1e-4, f"capacity 0.75 changed the logprobs by only {moved}"
            print(f"  grad: capacity 0.75 moves one process's logprobs by {moved:.1e}")
        for world, extra in layouts:
            ranks = run_named(world, grad + extra, ["grad.bin"])
            logp = np.concatenate([g["logp"] for g in ranks])
            diff = float(np.abs(logp - ref["logp"]).max())
            assert logp.shape == ref["logp"].shape and diff <= 1e-5, \
                f"{world} ranks {extra}: logprobs differ from 1 process by {diff:.3g}"
            aux = sum(g["json"]["aux_loss"] for g in ranks)
            assert abs(aux - ref["json"]["aux_loss"]) <= 1e-5, \
                f"{world} ranks {extra}: aux loss {aux}, 1 process {ref['json']['aux_loss']}"
            # Each parameter's gradient has its own largest magnitude (about 1): 1e-5 of it
            # is FP32 rounding of sums in another order; a lost token or rank is O(1e-2).
            worst = check_sharded_sums(ref["grad.bin"], ranks, "grad.bin", world, extra, 1e-5)
            print(f"  grad {world} ranks, {samples} documents {' '.join(extra + capacity)}: logprobs {diff:.1e}, "
                  f"gradients {worst:.1e} (relative)")
    # (b) One CISPO update (two minibatches), then one with token dropping on batches of as
    # many samples per minibatch as ranks in falling length (rank r trains sample r).
    learn = base + ["--mode", "rl", "--top-k", "2", "--adam-eps", "1e-4", "--steps", "1"]
    one_process = {}  # the one-process runs, by arguments (layouts of one world share them)

    def one(args):
        if tuple(args) not in one_process:
            one_process[tuple(args)] = run_named(1, args, ["bin"])[0]["bin"]
        return one_process[tuple(args)]

    # ZeRO-1 shards the dense parameters' state beside the experts'.
    zero1 = [(4, ["--expert-parallel", "2", "--expert-tp", "2", "--zero1"])]
    for world, extra in SHARDED_LAYOUTS + zero1:
        drops = [[], ["--samples", str(2 * world), "--minibatches", "2", "--sorted",
                      "--capacity", "0.75"]]
        if "--expert-tp" in extra and "--zero1" not in extra:
            # Fewer samples than ranks: ranks without tokens run empty forwards and backwards.
            drops.append(["--samples", "2", "--minibatches", "2"])
        for drop in drops:
            args = learn + drop
            ref = one(args)
            init = one(without(args, "--steps") + ["--steps", "0"])
            moved = float(np.mean([np.abs(ref[n][0] - init[n][0]).mean() for n in ref]))
            assert moved > 1e-3, f"the update moved the weights by only {moved}"
            if "--capacity" in drop:
                undropped = one(without(args, "--capacity"))
                dropped = max(float(np.abs(ref[n][0] - undropped[n][0]).max()) for n in ref)
                # Ten times the tolerance below: dropping visibly moves the update.
                assert dropped > 1e-4, f"capacity 0.75 changed the update by only {dropped}"
            ranks = run_named(world, args + extra, ["bin"])
            worst = 0.0
            for r, got in enumerate(ranks):
                for name, (arr, block) in got["bin"].items():
                    if not is_expert(name):
                        assert np.array_equal(arr, ranks[0]["bin"][name][0]), \
                            f"{world} ranks {extra}: rank {r}'s {name} differs from rank 0's"
                    diff = float(np.abs(arr - block_of(ref[name][0], block)).max())
                    worst = max(worst, diff)
                    assert diff <= PARAM_ATOL, \
                        f"{world} ranks {extra + drop}: rank {r}'s {name} differs from 1 " \
                        f"process by {diff:.3g} > {PARAM_ATOL}"
            print(f"  update {world} ranks {' '.join(extra + drop)}: max |dw| vs 1 rank "
                  f"{worst:.2e} (moved {moved:.1e})")
    # Each shard's optimizer state (bf16: with FP32 masters) goes through files and back:
    # a restored learner repeats the next update bit for bit; one file per expert shard.
    for world, extra, files in (
            (4, ["--expert-parallel", "2", "--expert-tp", "2", "--dtype", "bfloat16"],
             ["optimizer.pt.experts0-of-2.etp0-of-2", "optimizer.pt.experts0-of-2.etp1-of-2",
              "optimizer.pt.experts1-of-2.etp0-of-2", "optimizer.pt.experts1-of-2.etp1-of-2"]),
            (4, ["--expert-parallel", "2", "--shard-experts"],
             ["optimizer.pt.experts0-of-2", "optimizer.pt.experts1-of-2"])):
        out = tempfile.mkdtemp(prefix="lightrl_dist_")
        try:
            results = run_ranks(world, out, learn + extra + ["--check-resume"])
            for r, (rc, err) in enumerate(results):
                assert rc == 0 and "resumed update identical" in err, f"rank {r} {extra}:\n{err}"
            saved = sorted(f for f in os.listdir(os.path.join(out, "resume")) if "experts" in f)
            assert saved == files, saved
            print(f"  resume {world} ranks {' '.join(extra)}: identical, {len(files)} expert files")
        finally:
            shutil.rmtree(out, ignore_errors=True)


def case_nccl_expert():
    """`expert` on GPUs with NCCL (CUDA builds, 2 GPUs; CTest label gpu): rank r on cuda:r
    against one process on cuda:0, one EP group of 2 (micro-batching with ZeRO-1)."""
    check_expert(["--device", "cuda"], [(2, ["--expert-parallel", "2"]),
                                        (2, ["--expert-parallel", "2", "--zero1"])],
                 [(2, ["--expert-parallel", "2"])])


CASES = {"equal": case_equal, "bf16": case_bf16, "bf16_reduce": case_bf16_reduce,
         "resume": case_resume, "errors": case_errors,
         "run": case_run, "expert": case_expert, "expert_sharded": case_expert_sharded,
         "run_sharded": case_run_sharded, "run_tp": case_run_tp,
         "run_invariant_ep": case_run_invariant_ep, "run_invariant_tp": case_run_invariant_tp}
GPU_CASES = {"nccl": case_nccl, "nccl_expert": case_nccl_expert}
GPUS_NEEDED = 2
# CTest's SKIP_RETURN_CODE for these tests: every case asked for was skipped.
SKIP_RETURN_CODE = 77


def gpu_count():
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES applies), as the workers'
    LibTorch sees them; 0 without a CUDA build of torch."""
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main():
    # `expert`, `expert_sharded`, `bf16_reduce`, `run_sharded`, `run_tp`,
    # `run_invariant_ep` and `run_invariant_tp` run as their own CTests
    # (learner_expert_parallel, learner_expert_sharded, learner_bf16_reduce, run_sharded,
    # run_tensor_parallel, run_invariant_ep, run_invariant_tp); named, they run here too.
    names = sys.argv[1:] or [n for n in CASES
                             if n not in ("expert", "bf16_reduce", "expert_sharded",
                                          "run_sharded", "run_tp", "run_invariant_ep",
                                          "run_invariant_tp")]
    CASES.update(GPU_CASES)
    print(f"distributed_test seed {SEED} (DISTRIBUTED_TEST_SEED={SEED} repeats it)")
    passed = failed = skipped = 0
    gpus = gpu_count() if any(n in GPU_CASES for n in names) else None
    for name in names:
        if name in GPU_CASES and gpus < GPUS_NEEDED:
            print(f"SKIP {name}: needs {GPUS_NEEDED} GPUs, found {gpus} "
                  f"(torch.cuda.device_count(), CUDA_VISIBLE_DEVICES="
                  f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
            skipped += 1
            continue
        try:
            CASES[name]()
            print(f"PASS {name}")
            passed += 1
        except Exception:
            traceback.print_exc()
            print(f"FAIL {name}")
            failed += 1
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    if failed:
        return 1
    return SKIP_RETURN_CODE if skipped and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
