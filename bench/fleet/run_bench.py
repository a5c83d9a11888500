"""Fleet throughput on loopback with CPU rollout workers.

For each worker count N, runs `lightrl run` in spawn mode (N `lightrl rollout-worker`
processes) on the toy model and reads metrics.jsonl: groups/s over the generation phase
of each step (median over the steps after the first), and the controller's overhead per
group: generation time through the fleet minus the same steps generated in-process
(fleet.mode local), divided by the groups. Also reports the weight push time per step.

  LIGHTRL_BIN=build/rl/lightrl .venv/bin/python bench/fleet/run_bench.py [--workers 1,2,4]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.abspath(os.environ.get("LIGHTRL_BIN", os.path.join(ROOT, "build", "rl", "lightrl")))


def run(tmp, name, fleet, steps, pps, group, max_new):
    out = os.path.join(tmp, name)
    train = os.path.join(tmp, "train.jsonl")
    if not os.path.exists(train):
        with open(train, "w") as f:
            for i in range(steps * pps):
                f.write(json.dumps({"prompt": f"{i % 90}+{i % 7}=", "answer": str(i % 90 + i % 7)}) + "\n")
    config = {
        "run": {"output_dir": out, "seed": 1, "steps": steps},
        "model": {"init_config": os.path.join(ROOT, "configs/models/toy-arithmetic.json"),
                  "tokenizer": os.path.join(ROOT, "examples/toy/tokenizer.json")},
        "data": {"train": train},
        "rollout": {"group_size": group, "prompts_per_step": pps, "max_new_tokens": max_new,
                    "early_stop_window": 0, "stop_token_ids": [256]},
        "algorithm": {"dynamic_sampling": False},
        "logging": {"tensorboard": False, "progress": False},
        "fleet": fleet,
    }
    path = os.path.join(tmp, name + ".yaml")
    with open(path, "w") as f:
        json.dump(config, f)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([BIN, "run", "--config", path], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rows = rows[1:]  # the first step includes start-up
    gen = [r["time/generate_s"] for r in rows]
    sync = [r.get("time/weight_sync_s", 0.0) for r in rows]
    groups = rows[0]["rollout/groups_trained"]
    return {"gen_s": statistics.median(gen), "sync_s": statistics.median(sync), "groups": groups}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="lightrl-fleet-bench-")
    common = (args.steps, args.prompts_per_step, args.group_size, args.max_new_tokens)
    local = run(tmp, "local", {"mode": "local"}, *common)
    print(f"| workers | groups/s | generate s/step | weight push s/step | overhead ms/group vs in-process |")
    print(f"|---|---|---|---|---|")
    print(f"| in-process | {local['groups'] / local['gen_s']:.1f} | {local['gen_s']:.3f} | - | - |")
    for n in [int(x) for x in args.workers.split(",")]:
        r = run(tmp, f"spawn{n}", {"mode": "spawn", "rollout_workers": n, "min_workers": n,
                                   "worker_capacity": max(1, args.prompts_per_step // n)}, *common)
        overhead = (r["gen_s"] - local["gen_s"]) / r["groups"] * 1000 if n == 1 else float("nan")
        print(f"| {n} | {r['groups'] / r['gen_s']:.1f} | {r['gen_s']:.3f} | {r['sync_s']:.3f} | "
              f"{'%.2f' % overhead if n == 1 else '-'} |")


if __name__ == "__main__":
    main()
