#!/usr/bin/env python3
"""Compare CISPO, GRPO and DAPO on one task: the same base config, seed, steps and SFT
warm-up for each; then a plot of reward/mean (and eval/accuracy) against step and a
markdown table of the final numbers.

Usage:
  .venv/bin/python scripts/compare_losses.py --config configs/toy-arithmetic.yaml \\
      --out runs/compare [--steps 60] [--seed 1] [--losses cispo,grpo,dapo] \\
      [--bin build/rl/lightrl] [--threads N] [--resume]

What it does, under --out:
  sft/         when the base config has sft.steps > 0: the warm-up, run once (plus the one
               RL step `lightrl run` needs); its end-of-SFT checkpoint starts every RL run
               (model.path), so all losses start from the same weights. The RL runs start
               with a fresh optimizer state.
  <loss>/      one `lightrl run` per loss with algorithm.loss set to it and sft.steps 0.
               dapo also gets algorithm.overlong.filter: true (DAPO's overlong filtering);
               its clip-higher bounds are algorithm.dapo_eps_low/high. Everything else
               (dynamic sampling, minibatches, optimizer, ...) is the base config's for
               all three, so only the loss differs.
  <loss>.yaml  the config each run used.
  compare.png  reward/mean per step (faint: raw; bold: moving average over --smooth steps)
               and, when the runs evaluate, held-out greedy eval/accuracy per step.
  summary.md   final numbers: mean reward over the last --last steps, last eval accuracy,
               mean clip fraction, groups dropped, wall time.

While no token's ratio r leaves the clip ranges, CISPO and GRPO have the same gradient
(both r * A * grad log pi; the logged loss values differ) and so the same curves; they part
only once ratios leave [1 - ppo_eps, 1 + ppo_eps], which takes off-policy updates
(algorithm.minibatches > 1) and a large enough lr. Watch is/clip_fraction in the table.

Input paths in the base config are resolved against its directory, as `lightrl run` does.
An existing run directory is an error unless --resume is given, which continues each run
from its latest checkpoint (finished runs just re-evaluate) and reuses a finished SFT.
--threads sets OMP_NUM_THREADS for the runs (for a tiny model on a busy CPU, 1 is often
fastest).
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import time

import yaml

INPUT_PATHS = [("model", "path"), ("model", "init_config"), ("model", "tokenizer"),
               ("data", "train"), ("data", "eval"), ("sft", "data")]


def load_base(path):
    with open(path) as f:
        config = yaml.safe_load(f)
    base_dir = os.path.dirname(os.path.abspath(path))
    for section, key in INPUT_PATHS:
        value = config.get(section, {}).get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            config[section][key] = os.path.normpath(os.path.join(base_dir, value))
    return config


def write_config(path, config):
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False, default_flow_style=False)
    return path


def run_lightrl(binary, args, env, log_path):
    print(f"$ {binary} {' '.join(args)}  (log: {log_path})", flush=True)
    start = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.Popen([binary, *args], stdout=log,
                                stderr=subprocess.PIPE, text=True, env=env)
        for line in proc.stderr:  # show progress and keep it
            log.write(line)
            log.flush()
            if line.startswith(("[rl", "[sft", "eval", "held-out", "lightrl")):
                print("  " + line.rstrip(), flush=True)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"{binary} {' '.join(args)} failed with status {proc.returncode}; see {log_path}")
    return time.time() - start


def read_metrics(run_dir):
    """{key: {step: value}}, the last value logged for a step winning (a resumed run
    re-logs the steps after its checkpoint)."""
    series = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            for key, value in row.items():
                if key not in ("step", "time") and value is not None:
                    series.setdefault(key, {})[row["step"]] = value
    return series


def moving_average(values, window):
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot(results, path, smooth):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have_eval = any("eval/accuracy" in m for _, m in results)
    fig, axes = plt.subplots(1, 2 if have_eval else 1, figsize=(12 if have_eval else 6.5, 4.2),
                             squeeze=False)
    ax = axes[0][0]
    for i, (name, metrics) in enumerate(results):
        points = sorted(metrics.get("reward/mean", {}).items())
        if not points:
            continue
        steps, values = zip(*points)
        color = f"C{i}"
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
        ax.plot(steps, moving_average(list(values), smooth), color=color, linewidth=2,
                label=name)
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward/mean (training samples)")
    ax.set_title("training reward")
    ax.grid(alpha=0.3)
    ax.legend()
    if have_eval:
        ax = axes[0][1]
        for i, (name, metrics) in enumerate(results):
            points = sorted(metrics.get("eval/accuracy", {}).items())
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=f"C{i}", marker="o", linewidth=2, label=name)
        ax.set_xlabel("RL step")
        ax.set_ylabel("eval/accuracy (greedy, held out)")
        ax.set_title("held-out accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(results, seconds, last, steps, seed):
    rows = ["| loss | reward/mean (last %d steps) | eval/accuracy (first -> last) | "
            "is/clip_fraction (mean) | groups dropped | wall s |" % last,
            "|---|---|---|---|---|---|"]
    for name, metrics in results:
        reward = sorted(metrics.get("reward/mean", {}).items())
        tail = [v for _, v in reward[-last:]]
        evals = sorted(metrics.get("eval/accuracy", {}).items())
        clip = list(metrics.get("is/clip_fraction", {}).values())
        dropped = sum(metrics.get("rollout/groups_dropped", {}).values())
        rows.append("| %s | %s | %s | %s | %d | %.0f |" % (
            name,
            "%.3f" % (sum(tail) / len(tail)) if tail else "-",
            "%.3f -> %.3f" % (evals[0][1], evals[-1][1]) if evals else "-",
            "%.4f" % (sum(clip) / len(clip)) if clip else "-",
            dropped, seconds.get(name, 0)))
    return (f"{steps} RL steps per loss, seed {seed}, same SFT warm-up.\n\n" +
            "\n".join(rows) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="base run YAML")
    parser.add_argument("--out", required=True, help="directory for the runs and the plot")
    parser.add_argument("--losses", default="cispo,grpo,dapo")
    parser.add_argument("--steps", type=int, help="RL steps per loss (default: the base's)")
    parser.add_argument("--seed", type=int, help="run.seed for all (default: the base's)")
    parser.add_argument("--bin", default=os.environ.get("LIGHTRL_BIN", "build/rl/lightrl"))
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs")
    parser.add_argument("--smooth", type=int, default=5, help="moving-average window")
    parser.add_argument("--last", type=int, default=5, help="steps averaged in the table")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    base = load_base(args.config)
    if args.steps is not None:
        base["run"]["steps"] = args.steps
    if args.seed is not None:
        base["run"]["seed"] = args.seed
    base.setdefault("logging", {})["jsonl"] = True
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    resume = ["--resume"] if args.resume else []

    def fresh(run_dir):
        if os.path.exists(run_dir) and not args.resume:
            sys.exit(f"{run_dir} exists; pass --resume to continue it or choose another --out")

    seconds = {}
    sft_steps = int(base.get("sft", {}).get("steps", 0) or 0)
    start_model = None
    if sft_steps > 0:
        sft_dir = os.path.join(out, "sft")
        start_model = os.path.join(sft_dir, "checkpoints", f"step-000000-sft-{sft_steps:06d}")
        if not os.path.isdir(start_model):
            fresh(sft_dir)
            config = copy.deepcopy(base)
            config["run"].update({"output_dir": sft_dir, "steps": 1, "eval_every": 0})
            config.setdefault("checkpoint", {}).update({"every": 0, "keep": 5})
            path = write_config(os.path.join(out, "sft.yaml"), config)
            seconds["sft"] = run_lightrl(args.bin, ["run", "--config", path, *resume], env,
                                         os.path.join(out, "sft.log"))
            if not os.path.isdir(start_model):
                sys.exit(f"the SFT run left no {start_model}")
        print(f"every RL run starts from {start_model}")

    results = []
    for loss in losses:
        run_dir = os.path.join(out, loss)
        fresh(run_dir)
        config = copy.deepcopy(base)
        config["run"]["output_dir"] = run_dir
        config["run"]["name"] = f"{config['run'].get('name', 'run')}-{loss}"
        algorithm = config.setdefault("algorithm", {})
        algorithm["loss"] = loss
        if loss == "dapo":
            algorithm.setdefault("overlong", {})["filter"] = True
        if start_model:
            config["model"].pop("init_config", None)
            config["model"].pop("init_seed", None)
            config["model"]["path"] = start_model
            config["sft"]["steps"] = 0
        path = write_config(os.path.join(out, f"{loss}.yaml"), config)
        seconds[loss] = run_lightrl(args.bin, ["run", "--config", path, *resume], env,
                                    os.path.join(out, f"{loss}.log"))
        results.append((loss, read_metrics(run_dir)))

    png = os.path.join(out, "compare.png")
    plot(results, png, args.smooth)
    table = summary(results, seconds, args.last, base["run"]["steps"], base["run"].get("seed", 0))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table)
    print(f"\n{table}\nplot: {png}\nsummary: {os.path.join(out, 'summary.md')}")


if __name__ == "__main__":
    main()
