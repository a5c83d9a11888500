"""`lightrl run/replay --set KEY=VALUE` and `--dry-run` on the real binary (docs/cli.md):
overrides reach the config (the dry run's resolved config and a real one-step run's
config.resolved.yaml show them), errors about them name the --set with the config's
did-you-mean, a malformed --set is a usage error, and a dry run prints the plan of the
run and exits 0 without writing anything.

Run: LIGHTRL_BIN=build/rl/lightrl python3 tests/python/run_overrides_test.py
"""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("LIGHTRL_BIN", os.path.join(ROOT, "build/rl/lightrl")))
CONFIG = os.path.join(ROOT, "configs/toy-arithmetic.yaml")

failures = []


def run(args, cwd, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd, env=env)


def check(cond, what, proc=None):
    if cond:
        return
    failures.append(what)
    print(f"FAIL: {what}")
    if proc is not None:
        print(f"  rc={proc.returncode}\n  stdout={proc.stdout[-1500:]!r}\n"
              f"  stderr={proc.stderr[-1500:]!r}")


def tree(path):
    """Every file and folder under `path`, with sizes and modification times."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


def main():
    with tempfile.TemporaryDirectory(prefix="lightrl_set_") as root:
        out = os.path.join(root, "out")
        configs_before = tree(os.path.join(ROOT, "configs"))

        # A dry run with overrides: the plan on stdout, exit 0, nothing written anywhere.
        p = run(["run", "--config", CONFIG, "--set", f"run.output_dir={out}",
                 "--set", "rollout.group_size=4", "--set", "optimizer.lr=1e-5",
                 "--set", "rollout.prompts_per_step=3", "--set", "sft.steps=0",
                 "--set", "rollout.stop_strings=[\"</answer>\", \"\\n\\n\"]", "--dry-run"],
                cwd=root)
        check(p.returncode == 0, "run --dry-run: exit 0", p)
        for needle in ["is valid, with --set run.output_dir=", "--set rollout.group_size=4",
                       " parameters, 8 layers (7 lightning, 1 softmax)",
                       "1 learner rank", "rollouts on the controller's own engine",
                       "RL 100 steps x 3 prompts x 4 samples = 12 responses a step",
                       "lr 1e-05", f"output:  {out} (new; created at the start)",
                       "rewards: built-in arithmetic (weight 1)",
                       "resolved config (config.resolved.yaml):", "  group_size: 4\n",
                       "  lr: 1e-05\n", "  prompts_per_step: 3\n", '- "</answer>"\n',
                       "nothing was written or started"]:
            check(needle in p.stdout, f"run --dry-run: {needle!r} not in the plan", p)
        check(not p.stderr.strip() or "[E" not in p.stderr, "run --dry-run: an error logged", p)
        check(os.listdir(root) == [], f"run --dry-run wrote {os.listdir(root)}", p)
        check(tree(os.path.join(ROOT, "configs")) == configs_before,
              "run --dry-run changed configs/", p)

        # Replay's dry run: its own output folder, the log it reads; writes nothing.
        logs = os.path.join(root, "logs")
        p = run(["replay", "--config", CONFIG, "--rollouts", logs, "--set",
                 f"run.output_dir={out}", "--set", "run.steps=5", "--dry-run"], cwd=root)
        check(p.returncode == 0, "replay --dry-run: exit 0", p)
        for needle in [f"no generation (replays {logs})", "replay of up to 5 steps",
                       f"output:  {out}-replay (new", "nothing was written or started"]:
            check(needle in p.stdout, f"replay --dry-run: {needle!r} not in the plan", p)
        check(os.listdir(root) == [], f"replay --dry-run wrote {os.listdir(root)}", p)

        # Errors about an override name it, with the config's did-you-mean (exit 1).
        p = run(["run", "--config", CONFIG, "--set", "rollout.grop_size=4", "--dry-run"], cwd=root)
        check(p.returncode == 1, "unknown --set key: exit 1", p)
        check("lightrl run: --set rollout.grop_size=4: rollout.grop_size is not a known key "
              "(did you mean group_size?)" in p.stderr, "unknown --set key: message", p)
        p = run(["run", "--config", CONFIG, "--set", "rollout.group_size=1", "--dry-run"], cwd=root)
        check(p.returncode == 1 and "--set rollout.group_size=1: rollout.group_size must be >= 2"
              in p.stderr, "out-of-range --set: exit 1 naming the flag", p)
        p = run(["run", "--config", CONFIG, "--set", "data.eval=no/such.jsonl", "--dry-run"],
                cwd=root)
        check(p.returncode == 1 and "--set data.eval=no/such.jsonl: data.eval: file no/such.jsonl"
              " does not exist (looked for " + os.path.join(root, "no/such.jsonl") in p.stderr,
              "--set input path: resolved against the working directory", p)
        # A malformed --set is a usage error, before any file is read.
        p = run(["run", "--config", os.path.join(root, "missing.yaml"), "--set", "rollout.group_size"],
                cwd=root)
        check(p.returncode == 2 and "--set takes KEY=VALUE" in p.stderr and
              "lightrl run --help" in p.stderr, "--set without '=': usage error", p)
        p = run(["run", "--config", CONFIG, "--dry-run=yes"], cwd=root)
        check(p.returncode == 0, "--dry-run=yes is a switch", p)
        check(os.listdir(root) == [], f"failed runs wrote {os.listdir(root)}", p)

        # A real one-step run: the overrides are what it ran with (config.resolved.yaml).
        p = run(["run", "--config", CONFIG, "--no-progress", "--set", f"run.output_dir={out}",
                 "--set", "run.steps=1", "--set", "sft.steps=0", "--set", "run.eval_every=0",
                 "--set", "run.eval_sampled=0", "--set", "rollout.group_size=4",
                 "--set", "rollout.prompts_per_step=2", "--set", "algorithm.dynamic_sampling=false"],
                cwd=root, timeout=600)
        check(p.returncode == 0, "one-step run with --set: exit 0", p)
        resolved_path = os.path.join(out, "config.resolved.yaml")
        check(os.path.exists(resolved_path), "config.resolved.yaml written", p)
        if os.path.exists(resolved_path):
            resolved = open(resolved_path).read()
            for needle in ["  steps: 1\n", "  group_size: 4\n", "  prompts_per_step: 2\n",
                           "  dynamic_sampling: false\n"]:
                check(needle in resolved, f"config.resolved.yaml lacks {needle!r}", p)

    if failures:
        print(f"{len(failures)} --set/--dry-run failures")
        sys.exit(1)
    print("run --set and --dry-run OK")


if __name__ == "__main__":
    main()
