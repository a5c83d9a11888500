#!/usr/bin/env python3
"""Step time of an async run (rollout.async) with a slow reward server, its groups scored
on the trainer's thread versus scored beside it as each is generated.

For each value of reward.max_concurrent_groups (0 = scored on the trainer's thread when a
step takes them, the behaviour before overlapped scoring) it starts
bench/reward_overlap/delay_server.py (a fixed --delay-ms per item, a call's items one
after another), runs `lightrl run` on the toy arithmetic model in local async mode with
that server as the only reward, and reports the mean time/step_s over the steps after
the first (the first step has nothing ahead of it to overlap), the same less the
learner's time (what the step spent on anything else: waiting for groups to be generated
and scored, weight sync; less sensitive to a busy machine than the step time) and what
the server saw.

  LIGHTRL_BIN=build/rl/lightrl .venv/bin/python bench/reward_overlap/run_bench.py
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER = os.path.join(ROOT, "bench", "reward_overlap", "delay_server.py")
TOKENIZER = os.path.join(ROOT, "examples", "toy", "tokenizer.json")
MODEL = os.path.join(ROOT, "configs", "models", "toy-arithmetic.json")


def write_data(path, n):
    with open(path, "w") as f:
        for i in range(n):
            a, b = (i * 7) % 50, (i * 13) % 40
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


def run_once(args, tmp, concurrency):
    out = os.path.join(tmp, f"run-{concurrency}")
    stats = os.path.join(tmp, f"server-{concurrency}.json")
    server = subprocess.Popen([sys.executable, SERVER, "--delay-ms", str(args.delay_ms),
                               "--stats-file", stats], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise SystemExit(f"run_bench.py: the delay server did not start: {line!r}")
        address = line[len("listening on "):]
        data = os.path.join(tmp, "train.jsonl")
        write_data(data, args.steps * args.prompts_per_step)
        config = {
            "run": {"output_dir": out, "seed": 5, "steps": args.steps},
            "model": {"init_config": MODEL, "init_seed": 2, "tokenizer": TOKENIZER},
            "data": {"train": data, "shuffle": True},
            "rollout": {"group_size": args.group_size, "prompts_per_step": args.prompts_per_step,
                        "max_new_tokens": 24, "early_stop_window": 0, "async": True,
                        "max_staleness": 1},
            "algorithm": {"dynamic_sampling": False},
            "optimizer": {"lr": 0.001},
            "reward": {"servers": {"slow": {"address": address}},
                       "max_concurrent_groups": concurrency},
            "checkpoint": {"every": 0},
            "logging": {"tensorboard": False, "progress": False},
            "fleet": {"mode": "local"},
        }
        path = os.path.join(tmp, f"run-{concurrency}.yaml")
        with open(path, "w") as f:
            json.dump(config, f, indent=1)  # JSON is YAML
        env = dict(os.environ, OMP_NUM_THREADS="1")
        start = time.time()
        proc = subprocess.run([args.bin, "run", "--config", path], capture_output=True, text=True,
                              env=env)
        wall = time.time() - start
        if proc.returncode != 0:
            raise SystemExit(f"run_bench.py: lightrl run failed:\n{proc.stderr[-3000:]}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if "time/step_s" in r]
    later = [r["time/step_s"] for r in rows[1:]]
    with open(stats) as f:
        seen = json.load(f)
    return {
        "concurrency": concurrency,
        "step_s_mean": sum(later) / len(later),
        "train_s_mean": sum(r["time/train_s"] for r in rows[1:]) / len(later),
        "wall_s": wall,
        "reward_mean": sum(r["reward/mean"] for r in rows) / len(rows),
        **seen,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.environ.get("LIGHTRL_BIN", "build/rl/lightrl"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--delay-ms", type=float, default=100)
    parser.add_argument("--concurrency", default="0,1,4",
                        help="values of reward.max_concurrent_groups, comma-separated")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("run_bench.py: --steps must be >= 2 (the first step is not counted)")
    args.bin = os.path.abspath(args.bin)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} cores; {args.steps} steps x {args.prompts_per_step} groups x "
          f"{args.group_size} samples, {args.delay_ms:g} ms per item")
    print("| reward.max_concurrent_groups | step s (mean, steps 2..) | train s | step - train s "
          "| run wall s | server calls | max concurrent calls | reward mean |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="lightrl_reward_overlap_") as tmp:
        for c in (int(v) for v in args.concurrency.split(",")):
            r = run_once(args, tmp, c)
            print(f"| {c} | {r['step_s_mean']:.2f} | {r['train_s_mean']:.2f} "
                  f"| {r['step_s_mean'] - r['train_s_mean']:.2f} | {r['wall_s']:.1f} "
                  f"| {r['calls']} | {r['max_concurrent_calls']} | {r['reward_mean']:.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()
