"""The learning guard: the CPU demo (configs/toy-arithmetic.yaml) trained from scratch must
learn, or this test fails.

  sft     the demo's SFT warm-up (a noisy teacher's answers) reaches held-out greedy
          accuracy >= SFT_FLOOR and sampled accuracy (rollout temperature) >=
          SFT_SAMPLED_FLOOR;
  cispo   the demo's own 100 CISPO steps then raise the sampled accuracy by at least
          CISPO_MARGIN and keep the greedy accuracy (it may not fall by more than
          GREEDY_TOLERANCE);
  grpo    GRPO from the same SFT weights, GRPO_STEPS steps, and
  dapo    DAPO (clip-higher, overlong filter, soft penalty), DAPO_STEPS steps: each must
          raise the sampled accuracy by at least SHORT_MARGIN and keep the greedy one.

The floors and the margin sit below the figures measured over three seeds (docs/benchmarks.md,
"The CPU demo"), with room for noise (the sampled accuracy over 300 prompts x 4 samples has
a standard error of ~1.5 points, and greedy accuracy moves by up to 5 points between
evaluations of one RL run): SFT 93-95% greedy and 53-56% sampled; 100 CISPO steps +10 to
+13 points sampled with greedy within 2 points; 50 GRPO / DAPO steps +7.4 / +6.5 points
sampled, greedy -0.7 / -3.7. A run that stops learning lands far below the floors (the demo
before its SFT schedule: 6-10% greedy after SFT on seeds 1-3); an RL step that damages the
policy (a fresh optimizer at 3e-4 and 16 prompts a step: -10 to -25 points greedy within
20 steps) fails the keep check; RL that does not learn fails the margins (the demo's CISPO
at a quarter of its learning rate gains +4.9 points, under CISPO_MARGIN).

Run: LIGHTRL_BIN=build/rl/lightrl .venv/bin/python tests/python/learning_test.py [CASE ...]
LEARNING_TEST_SEED picks the seed (default 1); LEARNING_TEST_KEEP=1 keeps the runs.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("LIGHTRL_BIN", os.path.join(ROOT, "build", "rl", "lightrl"))
DEMO = os.path.join(ROOT, "configs", "toy-arithmetic.yaml")
SEED = int(os.environ.get("LEARNING_TEST_SEED", "1"))
# One intra-op thread: the model is tiny, and threads stall when other tests hold the cores.
ENV = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
RUN_TIMEOUT_S = 2400

SFT_FLOOR = 0.85
SFT_SAMPLED_FLOOR = 0.45
CISPO_MARGIN = 0.05
SHORT_MARGIN = 0.03
GRPO_STEPS = 50
DAPO_STEPS = 50
GREEDY_TOLERANCE = 0.06

INPUT_PATHS = [("model", "path"), ("model", "init_config"), ("model", "tokenizer"),
               ("data", "train"), ("data", "eval"), ("sft", "data")]


def demo_config(out_dir, **overrides):
    """The demo's config with input paths made absolute, the run in `out_dir`, and
    `overrides` ({"section.key": value}) applied."""
    with open(DEMO) as f:
        config = yaml.safe_load(f)
    base = os.path.dirname(DEMO)
    for section, key in INPUT_PATHS:
        value = config.get(section, {}).get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            config[section][key] = os.path.normpath(os.path.join(base, value))
    config["run"]["output_dir"] = out_dir
    config["run"]["seed"] = SEED
    config["model"]["init_seed"] = SEED
    config.setdefault("logging", {})["progress"] = False
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        node = config.setdefault(section, {})
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return config


def run(config, work, name):
    path = os.path.join(work, name + ".yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    start = time.time()
    proc = subprocess.run([BIN, "run", "--config", path], env=ENV, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        raise AssertionError(f"{name}: lightrl run exited {proc.returncode}\n{proc.stderr[-3000:]}")
    with open(os.path.join(config["run"]["output_dir"], "eval.json")) as f:
        result = json.load(f)
    print(f"  {name}: greedy {result['accuracy_before_rl']:.3f} -> "
          f"{result['accuracy_after_rl']:.3f}, sampled {result['sampled_accuracy_before_rl']:.3f}"
          f" -> {result['sampled_accuracy_after_rl']:.3f} ({time.time() - start:.0f} s)",
          flush=True)
    return result


def learned(name, result, margin):
    """Failures where RL did not raise the sampled held-out accuracy by `margin`, or
    lowered the greedy one by more than GREEDY_TOLERANCE."""
    out = []
    before, after = result["accuracy_before_rl"], result["accuracy_after_rl"]
    if after < before - GREEDY_TOLERANCE:
        out.append(f"{name}: held-out greedy accuracy fell {before:.3f} -> {after:.3f} "
                   f"(tolerance {GREEDY_TOLERANCE})")
    before, after = result["sampled_accuracy_before_rl"], result["sampled_accuracy_after_rl"]
    if after < before + margin:
        out.append(f"{name}: held-out sampled accuracy {before:.3f} -> {after:.3f} did not rise "
                   f"by the margin {margin}")
    return out


def sft_checkpoint(run_dir):
    ckpts = os.path.join(run_dir, "checkpoints")
    names = sorted(n for n in os.listdir(ckpts) if n.startswith("step-000000-sft-"))
    if not names:
        raise AssertionError(f"no end-of-SFT checkpoint in {ckpts}: {os.listdir(ckpts)}")
    return os.path.join(ckpts, names[-1])


def main(cases):
    work = tempfile.mkdtemp(prefix="lightrl_learning_")
    failures = []
    try:
        demo_dir = os.path.join(work, "demo")
        demo = run(demo_config(demo_dir, **{"checkpoint.every": 0}), work, "demo (SFT + CISPO)")
        if "sft" in cases:
            if demo["accuracy_before_rl"] < SFT_FLOOR:
                failures.append(f"sft: held-out greedy accuracy after SFT "
                                f"{demo['accuracy_before_rl']:.3f} < floor {SFT_FLOOR}")
            if demo["sampled_accuracy_before_rl"] < SFT_SAMPLED_FLOOR:
                failures.append(f"sft: held-out sampled accuracy after SFT "
                                f"{demo['sampled_accuracy_before_rl']:.3f} < floor {SFT_SAMPLED_FLOOR}")
        if "cispo" in cases:
            failures += learned("cispo", demo, CISPO_MARGIN)
        start = sft_checkpoint(demo_dir)
        comparisons = {
            "grpo": {"algorithm.loss": "grpo", "run.steps": GRPO_STEPS},
            # Room past the longest answer (3 digits + end token): with max_new_tokens 4
            # the soft penalty would fall on every right three-digit sum.
            "dapo": {"algorithm.loss": "dapo", "run.steps": DAPO_STEPS,
                     "rollout.max_new_tokens": 6, "algorithm.overlong.filter": True,
                     "algorithm.overlong.soft_buffer": 1},
        }
        for name, overrides in comparisons.items():
            if name not in cases:
                continue
            config = demo_config(os.path.join(work, name), **overrides, **{
                "model.path": start, "model.init_config": None, "model.init_seed": None,
                "sft.steps": 0, "run.eval_every": 0, "checkpoint.every": 0})
            failures += learned(name, run(config, work, name), SHORT_MARGIN)
    finally:
        if os.environ.get("LEARNING_TEST_KEEP") == "1":
            print(f"runs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    all_cases = ["sft", "cispo", "grpo", "dapo"]
    wanted = sys.argv[1:] or all_cases
    unknown = [c for c in wanted if c not in all_cases]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; known: {all_cases}")
    sys.exit(main(set(wanted)))
