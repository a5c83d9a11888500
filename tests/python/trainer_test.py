"""End-to-end checks of `lightrl run` and `lightrl replay` on a 2-layer hybrid (hidden 32)
that learns single-digit addition in seconds on a CPU:

  resume     a run killed with SIGKILL at random moments (once early, once mid-RL) and
             resumed each time ends with the same per-step metrics, the same rollout log
             and the same final weights as the same run left alone (bit-exact).
  metrics    the TensorBoard event files hold the scalars of metrics.jsonl, step by step
             (SFT's in the run tensorboard/sft, by SFT step from 1).
  rollouts   `lightrl rollouts export` gives one group per prompt group trained, with
             tokens, one logprob per token, rewards, group-normalised advantages and the
             generating policy version; a killed run's log reads back (torn tail too).
  replay     `lightrl replay --config X --rollouts runs/X/rollouts` (the run's own config)
             trains from the log without generating into its own folder, runs/X-replay:
             every file of the source run is byte-identical afterwards; it starts from the
             source's checkpoint the log's first record was sampled from and reproduces the
             run's per-step losses and train/inference logprob statistics (computed from the
             logged engine logprobs); it writes its own checkpoints, metrics and eval.json;
             --steps selects steps (bad ranges are refused); a folder holding another run or
             lying in the source run is refused; a killed replay resumes to the same weights;
             without a source checkpoint it warns; a bit-flipped log fails naming the file and
             offset.
  checksums  every checkpoint carries manifest.json (size and CRC-32C per file); one flipped
             bit in the latest checkpoint's weights stops `--resume` naming the file and
             the previous checkpoint, `--resume-fallback` resumes from that one (and ends
             bit-identical to the uninterrupted run); a checkpoint without a manifest
             (older runs) resumes with a warning; a corrupt model.path fails to load.
  corrupt_log  one flipped byte in the last complete record of a log is corruption, not
             a torn tail: `rollouts export` and `replay` fail naming the offset, and
             `--skip-corrupt` skips it and says how many were skipped.
  metrics_resume  a run killed after step 5 (checkpoint at step 4) and resumed logs every
             (step, metric) once in metrics.jsonl, and once in TensorBoard's view.
  sharded_resume  a checkpoint whose weights are replaced by ep 2 x expert-TP 2 shard
             files (`lightrl convert --to-layout`) resumes, and the run ends with the
             uninterrupted run's final weights, bit for bit.
  standalone  a run's checkpoint is usable on its own: it carries tokenizer.json,
             tokenizer_config.json and generation_config.json (each in manifest.json);
             `lightrl generate --model CKPT` takes text prompts and stops on the
             tokenizer's end token with no stop ids given; transformers loads the
             tokenizer, the generation config and the model from the folder and its
             greedy generate gives lightrl's tokens; `lightrl convert` carries the files.
  config     bad YAML (unknown key, wrong type, out-of-range value, missing data file)
             exits non-zero with "file:line: key" before any output directory exists.
  reward_sources  each reward source is logged on its own: the built-in kind as
             reward/<kind> (and eval/reward/<kind>) with its components; a custom reward
             server of the test's own beside a weighted built-in as reward/judge and
             reward/judge/<component>, matching the rollout log, for RL steps and eval;
             the server receives one Score call per RL step and one per evaluation, each
             holding every response; a server named like a step metric is refused.

Run: LIGHTRL_BIN=build/rl/lightrl .venv/bin/python tests/python/trainer_test.py [CASE ...]
TRAINER_TEST_SEED fixes the random kill moments.
"""
import hashlib
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback

BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")
TOKENIZER = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                                         "toy", "tokenizer.json"))
RUN_TIMEOUT_S = 300
# The model is tiny: one intra-op thread is fastest, and several stall badly when other
# processes hold the cores (16 s instead of 4 s per run on a busy 2-core machine).
ENV = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))

MODEL = {
    "vocab_size": 257, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
    "num_local_experts": 2, "num_experts_per_tok": 1, "max_position_embeddings": 512,
    "block_size": 16, "layer_types": ["linear_attention", "full_attention"],
    "full_attn_alpha_factor": 2.0, "linear_attn_alpha_factor": 2.0, "mlp_alpha_factor": 2.0,
    "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "router_aux_loss_coef": 0.001, "tie_word_embeddings": False, "hidden_act": "silu",
}

SFT_STEPS = 12
RL_STEPS = 6
MINIBATCHES = 2
LR = 0.001
WARMUP = 4


def scheduled_lr(update):
    """optimizer.schedule cosine with min_lr_ratio 0.1, over the RL updates alone."""
    if update < WARMUP:
        return LR * (update + 1) / WARMUP
    t = min(1.0, (update - WARMUP) / (RL_STEPS * MINIBATCHES - WARMUP))
    return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def base_config(task_dir, output_dir):
    """A run that takes ~15 s on two cores: 12 SFT steps make the model emit digits, so
    6 CISPO steps see groups with mixed rewards (most groups are not dropped)."""
    return {
        "run": {"name": "trainer-test", "output_dir": output_dir, "seed": 3,
                "steps": RL_STEPS, "eval_every": 3, "eval_samples": 16},
        "model": {"init_config": os.path.join(task_dir, "model.json"), "init_seed": 5,
                  "tokenizer": TOKENIZER},
        "data": {"train": os.path.join(task_dir, "train.jsonl"),
                 "eval": os.path.join(task_dir, "eval.jsonl")},
        "rollout": {"group_size": 4, "prompts_per_step": 8, "max_new_tokens": 4,
                    "early_stop_window": 0},
        "reward": {"kind": "arithmetic"},
        "algorithm": {"loss": "cispo", "max_refill_rounds": 1, "minibatches": MINIBATCHES},
        "optimizer": {"lr": LR, "schedule": "cosine", "warmup_steps": WARMUP},
        "sft": {"steps": SFT_STEPS, "batch_size": 32, "lr": 0.01},
        "checkpoint": {"every": 1, "keep": 2},
        "logging": {"progress": False},
    }


def to_yaml(value, indent=0):
    lines = []
    for key, v in value.items():
        pad = "  " * indent
        if isinstance(v, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(to_yaml(v, indent + 1))
        else:
            lines.append(f"{pad}{key}: {scalar(v)}")
    return lines


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(scalar(x) for x in v) + "]"
    return json.dumps(v)


def write_config(path, config):
    with open(path, "w") as f:
        f.write("\n".join(to_yaml(config)) + "\n")
    return path


def write_task(task_dir, train_rows=400, eval_rows=40, extra=None):
    """The toy task: model.json and train/eval rows of one-digit sums; `extra(a, b)` adds
    fields to a row."""
    rng = random.Random(0)
    os.makedirs(task_dir, exist_ok=True)
    with open(os.path.join(task_dir, "model.json"), "w") as f:
        json.dump(MODEL, f)
    for name, n in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows)):
        with open(os.path.join(task_dir, name), "w") as f:
            for _ in range(n):
                a = rng.randrange(10)
                b = rng.randrange(10 - a)
                row = {"prompt": f"{a}+{b}=", "answer": str(a + b)}
                row.update(extra(a, b) if extra else {})
                f.write(json.dumps(row) + "\n")


def lightrl(*args, timeout=RUN_TIMEOUT_S):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def run_ok(*args):
    start = time.time()
    proc = lightrl(*args)
    assert proc.returncode == 0, f"lightrl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc, time.time() - start


def is_time_based(key):
    return key == "time" or key.startswith("time/") or key.endswith("_per_s")


def read_metrics(run_dir):
    """{(step, key): [values in file order]}; a resumed run may log a step more than once."""
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            for key, v in row.items():
                if key != "step":
                    out.setdefault((row["step"], key), []).append(v)
    return out


def export_rollouts(log_dir, out_path):
    proc = lightrl("rollouts", "export", "--rollouts", log_dir, "--output", out_path)
    assert proc.returncode == 0, f"rollouts export {log_dir} failed:\n{proc.stderr}"
    with open(out_path) as f:
        return [json.loads(line) for line in f], proc.stderr


def latest_checkpoint(run_dir):
    try:
        with open(os.path.join(run_dir, "checkpoints", "latest")) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


class Runs:
    """The reference run, made once and shared by the cases that read it."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.task = os.path.join(tmp, "task")
        write_task(self.task)
        self._reference = None

    def config(self, name, **overrides):
        config = base_config(self.task, os.path.join(self.tmp, name))
        for dotted, v in overrides.items():
            section, key = dotted.split("__")
            config[section][key] = v
        return config

    def reference(self):
        if self._reference is None:
            # Every checkpoint kept: the replay case starts from the end of SFT.
            config = self.config("reference", checkpoint__keep=100)
            path = write_config(os.path.join(self.tmp, "reference.yaml"), config)
            _, seconds = run_ok("run", "--config", path)
            print(f"  reference run: {seconds:.1f} s")
            self._reference = os.path.join(self.tmp, "reference")
        return self._reference


def kill_after(proc, run_dir, ready, max_sleep_s, rng):
    """SIGKILLs `proc` a random moment after ready(latest checkpoint name) holds. Returns
    the checkpoint name seen at the kill, or None if the run ended first."""
    deadline = time.time() + RUN_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            return None
        name = latest_checkpoint(run_dir)
        if name is not None and ready(name):
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0, max_sleep_s))
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return latest_checkpoint(run_dir)


def case_resume(runs, rng):
    ref_dir = runs.reference()
    ref = read_metrics(ref_dir)
    path = write_config(os.path.join(runs.tmp, "killed.yaml"), runs.config("killed"))
    run_dir = os.path.join(runs.tmp, "killed")

    # First kill: soon after the first checkpoint (in SFT); then twice in RL; each a random
    # fraction of up to 1.5 RL steps after the checkpoint waited for appeared.
    step_s = sum(ref[(s, "time/step_s")][0] for s in range(1, RL_STEPS + 1)) / RL_STEPS
    kills = [(lambda name: True, 1.5 * step_s),
             (lambda name: int(name.split("-")[1]) >= 2, 1.5 * step_s),
             (lambda name: int(name.split("-")[1]) >= 4, 1.5 * step_s)]
    args = ["run", "--config", path]
    for ready, max_sleep in kills:
        proc = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=ENV)
        at = kill_after(proc, run_dir, ready, max_sleep, rng)
        err = proc.stderr.read()
        assert proc.returncode in (-signal.SIGKILL, 0), f"run failed:\n{err}"
        resumed = [line for line in err.splitlines() if "resumed from" in line]
        print(f"  {'resumed from ' + os.path.basename(resumed[-1].split()[4]) + ', then ' if resumed else ''}"
              + (f"killed with latest={at}" if at else "run ended before the kill"))
        if at is not None:
            # The log of a killed run reads back as it is, before any resume repairs it.
            export_rollouts(os.path.join(run_dir, "rollouts"), os.path.join(runs.tmp, "k.jsonl"))
        args = ["run", "--config", path, "--resume"]
    proc, seconds = run_ok(*args)
    resumed = [line for line in proc.stderr.splitlines() if "resumed from" in line]
    assert resumed, proc.stderr
    print(f"  {os.path.basename(resumed[0].split()[4])}: final resume to the end, {seconds:.1f} s")

    got = read_metrics(run_dir)
    want_keys = {k for k in ref if not is_time_based(k[1])}
    got_keys = {k for k in got if not is_time_based(k[1])}
    assert want_keys == got_keys, (f"metrics differ in (step, key): missing "
                                   f"{sorted(want_keys - got_keys)[:10]}, extra "
                                   f"{sorted(got_keys - want_keys)[:10]}")
    mismatches, worst = [], 0.0
    for key in sorted(want_keys):
        want = ref[key]
        # Every value logged for the step, including those the killed run logged before
        # dying, must be the uninterrupted run's value.
        for v in got[key]:
            if v != want[-1]:
                rel = abs(v - want[-1]) / max(abs(want[-1]), 1e-30)
                worst = max(worst, rel)
                mismatches.append(f"step {key[0]} {key[1]}: {v!r} vs {want[-1]!r}")
        if len(set(want)) != 1 and key[1] != "eval/accuracy":
            mismatches.append(f"reference logged {key} with different values {want}")
    assert not mismatches, (f"{len(mismatches)} metric values differ after resume (worst "
                            f"relative {worst:.3g}):\n  " + "\n  ".join(mismatches[:20]))
    print(f"  {len(want_keys)} (step, metric) pairs identical")

    final = f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}"
    for name in ("model.safetensors", "trainer_state.json"):
        a = open(os.path.join(ref_dir, "checkpoints", final, name), "rb").read()
        b = open(os.path.join(run_dir, "checkpoints", final, name), "rb").read()
        assert a == b, f"final {name} differs between the uninterrupted and the resumed run"

    # The resumed run's log, later copy of a re-run step winning, is the reference's log.
    ref_groups, _ = export_rollouts(os.path.join(ref_dir, "rollouts"),
                                    os.path.join(runs.tmp, "ref.jsonl"))
    groups, _ = export_rollouts(os.path.join(run_dir, "rollouts"),
                                os.path.join(runs.tmp, "killed.jsonl"))
    latest = {(g["step"], g["group_id"]): g for g in groups}
    assert len(groups) >= len(ref_groups), (len(groups), len(ref_groups))
    assert [latest[(g["step"], g["group_id"])] == g for g in ref_groups].count(False) == 0 and \
        len(latest) == len(ref_groups), "rollout log after resume differs from the reference"
    print(f"  rollout log identical ({len(ref_groups)} groups, {len(groups) - len(ref_groups)} "
          f"re-logged after the kills)")


def case_metrics(runs, rng):
    from tensorboard.backend.event_processing import event_accumulator
    ref_dir = runs.reference()
    accs = {}
    for run in ("", "sft"):
        acc = event_accumulator.EventAccumulator(
            os.path.join(ref_dir, "tensorboard", run), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()[event_accumulator.SCALARS]:
            assert tag not in accs, f"{tag} in two TensorBoard runs"
            accs[tag] = acc
    jsonl = {}
    with open(os.path.join(ref_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            for key, v in row.items():
                if key not in ("step", "time"):
                    jsonl.setdefault(key, []).append((row["step"], v))
    tags = set(accs)
    assert tags == set(jsonl), f"tags differ: only TB {tags - set(jsonl)}, only JSONL {set(jsonl) - tags}"
    for required in ("reward/mean", "reward/std", "loss/total", "loss/policy", "is/clip_fraction",
                     "policy/entropy", "optim/grad_norm", "optim/lr", "time/step_s",
                     "rollout/groups_trained", "sft/loss", "eval/accuracy"):
        assert required in tags, f"{required} missing from the metrics"
    for tag, points in jsonl.items():
        got = [(e.step, e.value) for e in accs[tag].Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], (tag, got, points)
        for (step, value), (_, want) in zip(got, points):
            f32 = struct.unpack("<f", struct.pack("<f", want))[0]
            assert value == f32, f"{tag} at step {step}: TensorBoard {value} vs JSONL {want}"
    steps = [s for s, _ in jsonl["reward/mean"]]
    assert steps == list(range(1, RL_STEPS + 1)), steps
    sft_steps = [s for s, _ in jsonl["sft/loss"]]
    assert sft_steps == list(range(1, SFT_STEPS + 1)), sft_steps
    assert all(tag.startswith("sft/") for tag in accs if accs[tag] is not accs["reward/mean"])
    assert all(math.isfinite(v) for _, v in jsonl["loss/total"])
    # The LR schedule runs over RL updates only; SFT warm-up updates do not advance it.
    for step, lr in jsonl["optim/lr"]:
        want = scheduled_lr(step * MINIBATCHES - 1)  # the step's last update
        assert math.isclose(lr, want, rel_tol=1e-9), f"optim/lr at step {step}: {lr}, want {want}"
    print(f"  {len(tags)} tags, {sum(len(p) for p in jsonl.values())} scalars match")


def case_rollouts(runs, rng):
    ref_dir = runs.reference()
    groups, _ = export_rollouts(os.path.join(ref_dir, "rollouts"), os.path.join(runs.tmp, "r.jsonl"))
    metrics = read_metrics(ref_dir)
    version = SFT_STEPS  # versions count optimizer updates: SFT's, then RL's
    for step in range(RL_STEPS):
        at = [g for g in groups if g["step"] == step]
        # metrics.jsonl logs step k+1 for the update made by the groups of controller step k.
        trained = metrics[(step + 1, "rollout/groups_trained")][0]
        assert len(at) == trained, f"step {step}: {len(at)} groups logged, {trained} trained"
        assert len({g["group_id"] for g in at}) == len(at), f"step {step}: duplicate group ids"
        for g in at:
            assert g["policy_version"] == version, (step, g["policy_version"], version)
            assert g["prompt_tokens"] and g["ground_truth"], g
            rewards = [s["reward"] for s in g["samples"]]
            assert len(rewards) == 4 and max(rewards) != min(rewards), (g["group_id"], rewards)
            mean = sum(rewards) / len(rewards)
            std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
            advantages = [s["advantage"] for s in g["samples"]]
            assert abs(sum(advantages) / len(advantages)) < 1e-6, (g["group_id"], advantages)
            for s, r in zip(g["samples"], rewards):
                assert math.isclose(s["advantage"], (r - mean) / (std + 1e-6), rel_tol=1e-6,
                                    abs_tol=1e-9), (g["group_id"], s["advantage"], r, mean, std)
                assert 1 <= len(s["tokens"]) <= 4 and len(s["logprobs"]) == len(s["tokens"]), s
                assert all(lp <= 0 and math.isfinite(lp) for lp in s["logprobs"]), s["logprobs"]
                assert s["finish_reason"] in ("stop", "length"), s["finish_reason"]
        version += MINIBATCHES if at else 0
    print(f"  {len(groups)} groups over {RL_STEPS} steps check out")

    # A torn tail (the writer died mid-append) is skipped with a warning.
    torn = os.path.join(runs.tmp, "torn")
    shutil.copytree(os.path.join(ref_dir, "rollouts"), torn)
    segments = sorted(n for n in os.listdir(torn) if n.endswith(".log"))
    with open(os.path.join(torn, segments[0]), "rb") as f:
        head = f.read(200)
    with open(os.path.join(torn, segments[-1]), "ab") as f:
        f.write(head[:100])
    again, err = export_rollouts(torn, os.path.join(runs.tmp, "t.jsonl"))
    assert again == groups, "a torn tail changed the groups read back"
    assert "torn" in err and segments[-1] in err, err


def record_offsets(path):
    data = open(path, "rb").read()
    offsets, at = [], 0
    while at + 12 <= len(data):
        magic, length, _ = struct.unpack_from("<III", data, at)
        assert magic == 0x4C52FFD9, (path, at)
        offsets.append(at)
        at += 12 + length
    return offsets


def tree_hashes(root):
    """{relative path: sha256} of every file and {relative path} of every folder under root."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root) + "/"] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def case_replay(runs, rng):
    ref_dir = runs.reference()
    log = os.path.join(ref_dir, "rollouts")
    before = tree_hashes(ref_dir)
    ref_yaml = os.path.join(runs.tmp, "reference.yaml")
    out = ref_dir + "-replay"
    proc, seconds = run_ok("replay", "--config", ref_yaml, "--rollouts", log)
    print(f"  replay: {seconds:.1f} s")
    assert f"trained on {RL_STEPS} logged steps" in proc.stderr, proc.stderr
    start = os.path.join(ref_dir, "checkpoints", f"step-000000-sft-{SFT_STEPS:06d}")
    assert f"starting from {start} " in proc.stderr, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    assert tree_hashes(ref_dir) == before, "the replay changed the source run's folder"
    assert not os.path.exists(os.path.join(out, "rollouts")), "replay wrote a rollout log"
    assert latest_checkpoint(out) == f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}", latest_checkpoint(out)
    for name in ("metrics.jsonl", "eval.json", "replay.json", "config.resolved.yaml"):
        assert os.path.isfile(os.path.join(out, name)), f"no {name} in {out}"
    with open(os.path.join(out, "eval.json")) as f:
        assert json.load(f)["accuracy_after_rl"] is not None
    metrics = read_metrics(out)
    assert not any(k.startswith("reward/") for _, k in metrics), "replay generated and scored"
    # From the run's own weights and optimizer state, the replay's steps are the run's:
    # the train/inference statistics come from the logged engine logprobs (recomputed
    # ones would give a mismatch of 0).
    want = read_metrics(ref_dir)
    keys = ("loss/total", "optim/grad_norm", "is/clip_fraction", "is/truncated_is_weight_mean",
            "policy/train_infer_logprob_abs_diff", "policy/train_infer_kl")
    differ = [f"step {step} {key}: replay {metrics.get((step, key))} vs run {want[(step, key)]}"
              for step in range(1, RL_STEPS + 1) for key in keys
              if metrics.get((step, key)) != want[(step, key)]]
    assert not differ, "the replay's steps are not the run's:\n  " + "\n  ".join(differ)
    assert want[(1, "policy/train_infer_logprob_abs_diff")][0] > 0, want[(1, "policy/train_infer_logprob_abs_diff")]
    print("  replay into runs/X-replay: source untouched, same per-step losses and "
          "train/inference statistics as the run")

    # --steps: the replay starts at the checkpoint before its first step.
    sel = os.path.join(runs.tmp, "replay-steps")
    proc, _ = run_ok("replay", "--config", ref_yaml, "--rollouts", log, "--output", sel,
                     "--steps", "3:4")
    assert "trained on 2 logged steps" in proc.stderr, proc.stderr
    assert f"step-000002-sft-{SFT_STEPS:06d}" in proc.stderr, proc.stderr
    got = read_metrics(sel)
    assert {s for s, k in got if k == "loss/total"} == {3, 4}, sorted(got)
    assert all(got[(s, k)] == want[(s, k)] for s in (3, 4) for k in keys), "--steps 3:4 differs"
    # --versions: each step makes MINIBATCHES versions, after SFT's.
    sel_v = os.path.join(runs.tmp, "replay-versions")
    first = SFT_STEPS + MINIBATCHES
    proc, _ = run_ok("replay", "--config", ref_yaml, "--rollouts", log, "--output", sel_v,
                     "--versions", f"{first}:{first + 1}")
    assert "trained on 1 logged steps" in proc.stderr, proc.stderr
    assert f"step-000001-sft-{SFT_STEPS:06d}" in proc.stderr, proc.stderr
    got = read_metrics(sel_v)
    assert {s for s, k in got if k == "loss/total"} == {2}, sorted(got)
    assert all(got[(2, k)] == want[(2, k)] for k in keys), "--versions differs"
    for bad, message in (("5:3", "--steps must be A:B"), ("x", "--steps must be A:B"),
                         ("0:2", "--steps must be A:B"), ("9:", "select none")):
        proc = lightrl("replay", "--config", ref_yaml, "--rollouts", log, "--output",
                       os.path.join(runs.tmp, "replay-bad-steps"), "--steps", bad)
        assert proc.returncode != 0 and message in proc.stderr, (bad, proc.stderr)
    assert not os.path.exists(os.path.join(runs.tmp, "replay-bad-steps"))
    print(f"  --steps 3:4 replays steps 3 and 4; bad ranges: {proc.stderr.strip()}")

    # Folders that hold another run, or lie in the source run, are refused.
    for target, args, message in ((ref_dir, (), "lies in"),
                                  (os.path.join(ref_dir, "replay"), (), "lies in"),
                                  (out, (), "already holds a run"),
                                  (sel, ("--resume",), None)):
        proc = lightrl("replay", "--config", ref_yaml, "--rollouts", log, "--output", target, *args)
        if message is None:
            assert proc.returncode == 0, proc.stderr
            continue
        assert proc.returncode != 0 and message in proc.stderr, (target, proc.stderr)
        print(f"  {proc.stderr.strip()}")
    other = os.path.join(runs.tmp, "other-run")
    os.makedirs(os.path.join(other, "checkpoints"))
    open(os.path.join(other, "checkpoints", "latest"), "w").write("step-000001-sft-000000\n")
    other_before = tree_hashes(other)
    for args, message in (((), "already holds a run"), (("--resume",), "not a replay")):
        proc = lightrl("replay", "--config", ref_yaml, "--rollouts", log, "--output", other, *args)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert tree_hashes(other) == other_before, "a refused replay wrote into the folder"

    # A killed replay resumes to the uninterrupted replay's weights, each step logged once.
    killed = os.path.join(runs.tmp, "replay-killed")
    args = ["replay", "--config", ref_yaml, "--rollouts", log, "--output", killed]
    proc = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    at = kill_after(proc, killed, lambda n: n.startswith("step-000002"), 0.2, rng)
    proc, _ = run_ok(*args, "--resume")
    if at is not None:
        assert "resumed from" in proc.stderr, proc.stderr
    final = f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}"
    with open(os.path.join(killed, "checkpoints", final, "model.safetensors"), "rb") as f, \
            open(os.path.join(out, "checkpoints", final, "model.safetensors"), "rb") as g:
        assert f.read() == g.read(), "the resumed replay ends with other weights"
    lines = [json.loads(line) for line in open(os.path.join(killed, "metrics.jsonl"))]
    steps = [row["step"] for row in lines if "loss/total" in row]
    assert steps == list(range(1, RL_STEPS + 1)), steps
    print(f"  replay killed at {at}, resumed: same final weights")

    # Without the source's checkpoints the replay starts from model.init_config and says so.
    orphan = os.path.join(runs.tmp, "orphan")
    shutil.copytree(log, os.path.join(orphan, "rollouts"))
    proc, _ = run_ok("replay", "--config", ref_yaml, "--rollouts", os.path.join(orphan, "rollouts"),
                     "--output", os.path.join(runs.tmp, "replay-orphan"), "--steps", ":1")
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "random model" in warnings[0], proc.stderr
    print(f"  {warnings[0]}")
    proc = lightrl("replay", "--config", ref_yaml, "--rollouts", os.path.join(orphan, "rollouts"),
                   "--output", out, "--resume")
    assert proc.returncode != 0 and "a replay of another log" in proc.stderr, proc.stderr
    assert tree_hashes(ref_dir) == before, "a replay changed the source run's folder"

    # From the same weights with a fresh optimizer, a replay makes the live run's updates
    # bit for bit: same batches, same order (16 prompts per step give group ids that do
    # not sort in log order), same overlong filter (DAPO's, on 4-token responses).
    config = runs.config("live", run__eval_every=0, rollout__prompts_per_step=16,
                         algorithm__loss="dapo", algorithm__overlong={"filter": True})
    config["model"] = {"path": os.path.join(ref_dir, "checkpoints", f"step-000000-sft-{SFT_STEPS:06d}"),
                       "tokenizer": TOKENIZER}
    config["sft"]["steps"] = 0
    live_yaml = write_config(os.path.join(runs.tmp, "live.yaml"), config)
    run_ok("run", "--config", live_yaml)
    live = os.path.join(runs.tmp, "live")
    groups, _ = export_rollouts(os.path.join(live, "rollouts"), os.path.join(runs.tmp, "l.jsonl"))
    truncated = sum(s["finish_reason"] == "length" for g in groups for s in g["samples"])
    late = sum(int(g["group_id"].rsplit("-", 1)[1]) >= 10 for g in groups)
    print(f"  live DAPO run: {len(groups)} groups, {late} with index >= 10, {truncated} "
          f"truncated samples")
    config["run"]["output_dir"] = os.path.join(runs.tmp, "live-replay")
    path = write_config(os.path.join(runs.tmp, "live-replay.yaml"), config)
    run_ok("replay", "--config", path, "--rollouts", os.path.join(live, "rollouts"),
           "--output", config["run"]["output_dir"])
    want, got = read_metrics(live), read_metrics(config["run"]["output_dir"])
    differ = [f"step {step} {key}: replay {got[(step, key)]} vs live {want[(step, key)]}"
              for step in range(1, RL_STEPS + 1)
              for key in ("loss/total", "is/clip_fraction", "optim/grad_norm")
              if got[(step, key)] != want[(step, key)]]
    final = f"step-{RL_STEPS:06d}-sft-000000"
    same = (open(os.path.join(live, "checkpoints", final, "model.safetensors"), "rb").read() ==
            open(os.path.join(config["run"]["output_dir"], "checkpoints", final,
                              "model.safetensors"), "rb").read())
    assert not differ and same, ("replay does not reproduce the live run's updates:\n  " +
                                 "\n  ".join(differ) + ("" if same else "\n  final weights differ"))
    print("  replay of a live run: identical losses, grad norms and final weights")

    # One flipped bit in a record that is not the last: DataLoss with file and offset.
    bad = os.path.join(runs.tmp, "bad-log", "rollouts")
    shutil.copytree(log, bad)
    segment = os.path.join(bad, sorted(n for n in os.listdir(bad) if n.endswith(".log"))[0])
    offsets = record_offsets(segment)
    assert len(offsets) >= 3, offsets
    victim = offsets[len(offsets) // 2]
    data = bytearray(open(segment, "rb").read())
    data[victim + 12 + rng.randrange(offsets[len(offsets) // 2 + 1] - victim - 12)] ^= 1 << rng.randrange(8)
    open(segment, "wb").write(bytes(data))
    path = write_config(os.path.join(runs.tmp, "replay-bad.yaml"), runs.config("replay-bad"))
    proc = lightrl("replay", "--config", path, "--rollouts", bad)
    assert proc.returncode != 0, "replay of a corrupt log succeeded"
    assert os.path.basename(segment) in proc.stderr and str(victim) in proc.stderr, proc.stderr
    print(f"  corrupt log: {proc.stderr.strip().splitlines()[-1]}")
    assert not os.path.exists(os.path.join(runs.tmp, "replay-bad-replay"))


def flip_bit(path, offset, rng):
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 1 << rng.randrange(8)
    open(path, "wb").write(bytes(data))


def copy_run(runs, src, name):
    """A copy of the run in `src` under `name`, and its config (every checkpoint kept)."""
    dst = os.path.join(runs.tmp, name)
    shutil.copytree(src, dst)
    return dst, write_config(dst + ".yaml", runs.config(name, checkpoint__keep=100))


def case_checksums(runs, rng):
    ref_dir = runs.reference()
    names = sorted(n for n in os.listdir(os.path.join(ref_dir, "checkpoints")) if n.startswith("step-"))
    for name in names:
        manifest = json.load(open(os.path.join(ref_dir, "checkpoints", name, "manifest.json")))
        listed = {f["name"] for f in manifest["files"]}
        assert {"config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"} <= listed, \
            (name, listed)
    final, previous = f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}", f"step-{RL_STEPS - 1:06d}-sft-{SFT_STEPS:06d}"
    assert names[-2:] == [previous, final], names

    # One flipped bit in the tensor data of the latest checkpoint.
    run_dir, path = copy_run(runs, ref_dir, "corrupt-ckpt")
    weights = os.path.join(run_dir, "checkpoints", final, "model.safetensors")
    size = os.path.getsize(weights)
    data_start = 8 + struct.unpack("<Q", open(weights, "rb").read(8))[0]
    flip_bit(weights, data_start + rng.randrange(size - data_start), rng)
    proc = lightrl("run", "--config", path, "--resume")
    message = proc.stderr.strip()
    assert proc.returncode != 0, f"resumed from a corrupt checkpoint:\n{message}"
    for word in (f"{final}/model.safetensors", "CRC-32C", previous, "--resume-fallback"):
        assert word in message, f"no {word!r} in: {message}"
    assert latest_checkpoint(run_dir) == final
    print(f"  corrupt latest: {message.splitlines()[-1]}")

    proc, seconds = run_ok("run", "--config", path, "--resume", "--resume-fallback")
    resumed = [line for line in proc.stderr.splitlines() if "resumed from" in line]
    assert resumed and previous in resumed[0], proc.stderr
    for name in ("model.safetensors", "trainer_state.json"):
        a = open(os.path.join(ref_dir, "checkpoints", final, name), "rb").read()
        b = open(os.path.join(run_dir, "checkpoints", final, name), "rb").read()
        assert a == b, f"{name} after --resume-fallback differs from the uninterrupted run's"
    print(f"  --resume-fallback: resumed from {previous}, final weights identical ({seconds:.1f} s)")

    # A checkpoint written before manifests existed still resumes, with a warning.
    run_dir, path = copy_run(runs, ref_dir, "legacy-ckpt")
    os.remove(os.path.join(run_dir, "checkpoints", final, "manifest.json"))
    proc, _ = run_ok("run", "--config", path, "--resume")
    assert "warning" in proc.stderr and "no manifest.json" in proc.stderr, proc.stderr

    # A corrupt checkpoint given as model.path fails to load, naming the file.
    model_dir = os.path.join(runs.tmp, "corrupt-model")
    shutil.copytree(os.path.join(ref_dir, "checkpoints", previous), model_dir)
    flip_bit(os.path.join(model_dir, "model.safetensors"), data_start, rng)
    config = runs.config("from-corrupt-model")
    config["model"] = {"path": model_dir, "tokenizer": TOKENIZER}
    config["sft"]["steps"] = 0
    proc = lightrl("run", "--config", write_config(os.path.join(runs.tmp, "fcm.yaml"), config))
    assert proc.returncode != 0 and "model.safetensors" in proc.stderr and "CRC-32C" in proc.stderr, \
        proc.stderr
    print(f"  corrupt model.path: {proc.stderr.strip().splitlines()[-1]}")


def case_sharded_resume(runs, rng):
    ref_dir = runs.reference()
    final, previous = f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}", f"step-{RL_STEPS - 1:06d}-sft-{SFT_STEPS:06d}"
    run_dir, path = copy_run(runs, ref_dir, "sharded-ckpt")
    checkpoints = os.path.join(run_dir, "checkpoints")
    shutil.rmtree(os.path.join(checkpoints, final))
    with open(os.path.join(checkpoints, "latest"), "w") as f:
        f.write(previous + "\n")
    # The previous checkpoint's weights as ep 2 x expert-TP 2 shard files (no manifest: the
    # files changed; resume warns and reads them).
    ckpt = os.path.join(checkpoints, previous)
    shards = os.path.join(runs.tmp, "sharded-weights")
    run_ok("convert", "--model", ckpt, "--output", shards, "--to-layout", "ep=2,expert_tp=2")
    os.remove(os.path.join(ckpt, "model.safetensors"))
    os.remove(os.path.join(ckpt, "manifest.json"))
    copied = [n for n in os.listdir(shards) if n.startswith("model")]
    assert "model.sharded.index.json" in copied and len(copied) == 5, copied
    for name in copied:
        shutil.copy(os.path.join(shards, name), ckpt)
    proc, seconds = run_ok("run", "--config", path, "--resume")
    resumed = [line for line in proc.stderr.splitlines() if "resumed from" in line]
    assert resumed and previous in resumed[0], proc.stderr
    for name in ("model.safetensors", "trainer_state.json"):
        a = open(os.path.join(ref_dir, "checkpoints", final, name), "rb").read()
        b = open(os.path.join(run_dir, "checkpoints", final, name), "rb").read()
        assert a == b, f"{name} after resuming from shards differs from the uninterrupted run's"
    print(f"  resumed from sharded {previous}, final weights identical ({seconds:.1f} s)")


def case_corrupt_log(runs, rng):
    ref_dir = runs.reference()
    bad = os.path.join(runs.tmp, "bad-last-record", "rollouts")
    shutil.copytree(os.path.join(ref_dir, "rollouts"), bad)
    segment = os.path.join(bad, sorted(n for n in os.listdir(bad) if n.endswith(".log"))[-1])
    last = record_offsets(segment)[-1]
    flip_bit(segment, last + 12 + rng.randrange(os.path.getsize(segment) - last - 12), rng)
    want = f"{os.path.basename(segment)}: corrupt record at byte offset {last}"

    proc = lightrl("rollouts", "export", "--rollouts", bad, "--output", os.path.join(runs.tmp, "b.jsonl"))
    assert proc.returncode != 0 and want in proc.stderr, proc.stderr
    groups, _ = export_rollouts(os.path.join(ref_dir, "rollouts"), os.path.join(runs.tmp, "g.jsonl"))
    proc = lightrl("rollouts", "export", "--rollouts", bad, "--output",
                   os.path.join(runs.tmp, "b.jsonl"), "--skip-corrupt")
    assert proc.returncode == 0 and "skipped 1 corrupt records" in proc.stderr, proc.stderr
    with open(os.path.join(runs.tmp, "b.jsonl")) as f:
        assert [json.loads(line) for line in f] == groups[:-1]

    path = write_config(os.path.join(runs.tmp, "replay-last.yaml"), runs.config("replay-last"))
    proc = lightrl("replay", "--config", path, "--rollouts", bad)
    assert proc.returncode != 0 and want in proc.stderr, proc.stderr
    assert not os.path.exists(os.path.join(runs.tmp, "replay-last-replay"))
    print(f"  replay: {proc.stderr.strip().splitlines()[-1]}")
    proc, _ = run_ok("replay", "--config", path, "--rollouts", bad, "--skip-corrupt")
    assert "skipped 1 corrupt records" in proc.stderr, proc.stderr
    print("  --skip-corrupt: replayed, 1 corrupt record skipped")


def case_metrics_resume(runs, rng):
    from tensorboard.backend.event_processing import event_accumulator
    path = write_config(os.path.join(runs.tmp, "metrics-resume.yaml"),
                        runs.config("metrics-resume", checkpoint__every=2))
    run_dir = os.path.join(runs.tmp, "metrics-resume")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    proc = subprocess.Popen([BIN, "run", "--config", path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + RUN_TIMEOUT_S
    while proc.poll() is None and time.time() < deadline:
        if os.path.exists(metrics) and any(row["step"] == 5 and "reward/mean" in row
                                           for row in map(json.loads, open(metrics))):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    err = proc.stderr.read()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{err}"
    at = latest_checkpoint(run_dir)
    assert at == f"step-000004-sft-{SFT_STEPS:06d}", f"killed with latest={at}, expected step 4"

    proc, _ = run_ok("run", "--config", path, "--resume")
    assert "dropped" in proc.stderr, proc.stderr

    # The same lines as the run left alone (which logs the last step's eval twice: in the
    # loop and after it), in JSONL and in TensorBoard's view.
    def jsonl_counts(run):
        counts = {}
        for line in open(os.path.join(run, "metrics.jsonl")):
            row = json.loads(line)
            for key in row:
                if key not in ("step", "time"):
                    counts[(row["step"], key)] = counts.get((row["step"], key), 0) + 1
        return counts

    def tensorboard_steps(run):
        acc = event_accumulator.EventAccumulator(
            os.path.join(run, "tensorboard"), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()[event_accumulator.SCALARS]}

    ref_dir = runs.reference()
    got, want = jsonl_counts(run_dir), jsonl_counts(ref_dir)
    extra = sorted(k for k in got if got[k] != want.get(k))
    assert set(got) == set(want) and not extra, (
        f"metrics.jsonl after resume differs from the uninterrupted run's in "
        f"{[(k, got.get(k), want.get(k)) for k in extra][:10]}")
    got, want = tensorboard_steps(run_dir), tensorboard_steps(ref_dir)
    differ = sorted(tag for tag in want if got.get(tag) != want[tag])
    assert set(got) == set(want) and not differ, (
        f"TensorBoard after resume: {[(t, got.get(t), want[t]) for t in differ][:5]}")
    print(f"  killed after step 5, resumed from step 4: {len(jsonl_counts(run_dir))} (step, metric) "
          "pairs logged as often as by the run left alone (JSONL and TensorBoard)")


def case_config(runs, rng):
    cases = [
        # (name, section, key, bad value or None to add an unknown key, words in the message)
        ("unknown key", "rollout", "group_sise", 4, ["rollout.group_sise", "group_size"]),
        ("wrong type", "rollout", "group_size", "eight", ["rollout.group_size", "eight"]),
        ("out of range", "rollout", "group_size", 1, ["rollout.group_size", "1"]),
        ("out of range float", "rollout", "top_p", 1.5, ["rollout.top_p", "1.5"]),
        ("wrong type bool", "data", "shuffle", 3, ["data.shuffle"]),
        ("missing data file", "data", "train", os.path.join(runs.task, "nope.jsonl"),
         ["data.train", "nope.jsonl"]),
    ]
    failures = []
    for name, section, key, value, words in cases:
        out = os.path.join(runs.tmp, "config-" + name.replace(" ", "-"))
        config = runs.config(os.path.basename(out))
        config[section][key] = value
        path = write_config(out + ".yaml", config)
        line = next(i + 1 for i, text in enumerate(open(path).read().splitlines())
                    if text.strip().startswith(key + ":"))
        proc = lightrl("run", "--config", path, timeout=30)
        message = proc.stderr.strip()
        problems = []
        if proc.returncode == 0:
            problems.append("exit status 0")
        if f"{path}:{line}:" not in message:
            problems.append(f"no '{path}:{line}:'")
        problems += [f"no '{w}'" for w in words if w not in message]
        if os.path.exists(out):
            problems.append("output directory created")
        if problems:
            failures.append(f"{name}: {', '.join(problems)} in: {message!r}")
        else:
            print(f"  {name}: {message}")
    assert not failures, "\n  ".join(failures)


def case_standalone(runs, rng):
    ckpt = os.path.join(runs.reference(), "checkpoints", latest_checkpoint(runs.reference()))
    files = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
    with open(os.path.join(ckpt, "manifest.json")) as f:
        listed = {e["name"]: e for e in json.load(f)["files"]}
    for name in files:
        assert name in listed, f"{name} not in {ckpt}/manifest.json: {sorted(listed)}"
        assert listed[name]["bytes"] == os.path.getsize(os.path.join(ckpt, name)), name
    with open(os.path.join(ckpt, "tokenizer.json"), "rb") as f, open(TOKENIZER, "rb") as g:
        assert f.read() == g.read(), "the checkpoint's tokenizer.json is not the run's"
    # The copy stands alone: nothing of the run's folders is reachable from it.
    alone = os.path.join(runs.tmp, "standalone-ckpt")
    shutil.copytree(ckpt, alone)

    prompts = [f"{a}+{b}=" for a in range(5) for b in range(3)]
    inp = os.path.join(runs.tmp, "standalone-prompts.jsonl")
    with open(inp, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p}) + "\n")
    out = os.path.join(runs.tmp, "standalone-out.jsonl")
    # Greedy, with room to run on: only an end token stops a sample short of 16 tokens.
    run_ok("generate", "--model", alone, "--input", inp, "--output", out,
           "--temperature", "0", "--max-new-tokens", "16")
    with open(out) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == len(prompts), rows
    stopped = [r for r in rows if r["finish_reason"] == "stop"]
    assert len(stopped) >= len(rows) // 2, f"only {len(stopped)} of {len(rows)} stopped: {rows}"
    for r in stopped:
        assert r["tokens"][-1] == 256 and 256 not in r["tokens"][:-1], r
    for r in rows:
        assert r["finish_reason"] in ("stop", "length"), r
        assert r["prompt"] in prompts and "text" in r, r
    print(f"  generate: {len(stopped)} of {len(rows)} greedy samples end on <|endoftext|>")
    # Without flags the run's sampling applies: rollout.max_new_tokens is 4.
    sampled = os.path.join(runs.tmp, "standalone-sampled.jsonl")
    run_ok("generate", "--model", alone, "--input", inp, "--output", sampled)
    with open(sampled) as f:
        lengths = [len(json.loads(line)["tokens"]) for line in f]
    assert max(lengths) <= 4, lengths

    from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                              PreTrainedTokenizerFast)
    import torch
    tok = AutoTokenizer.from_pretrained(alone)
    assert isinstance(tok, PreTrainedTokenizerFast), type(tok)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 256, (tok.eos_token, tok.eos_token_id)
    fast = PreTrainedTokenizerFast.from_pretrained(alone)
    for r in rows:
        assert fast.encode(r["prompt"], add_special_tokens=False) == r["prompt_tokens"], r
    gen = GenerationConfig.from_pretrained(alone)
    assert gen.eos_token_id == 256 and gen.bos_token_id is None, gen
    assert gen.do_sample and gen.temperature == 1.0 and gen.top_k == 0 and gen.max_new_tokens == 4, gen
    model = AutoModelForCausalLM.from_pretrained(alone).eval()
    assert model.generation_config.eos_token_id == 256, model.generation_config
    for r in rows:
        with torch.no_grad():
            ids = model.generate(torch.tensor([r["prompt_tokens"]]), do_sample=False,
                                 max_new_tokens=16, pad_token_id=256)[0].tolist()
        assert ids[len(r["prompt_tokens"]):] == r["tokens"], (r["prompt"], ids, r["tokens"])
    print("  transformers: tokenizer, generation config and greedy generate agree")

    converted = os.path.join(runs.tmp, "standalone-converted")
    run_ok("convert", "--model", alone, "--output", converted, "--dtype", "bfloat16")
    for name in files:
        with open(os.path.join(alone, name), "rb") as f, open(os.path.join(converted, name), "rb") as g:
            assert f.read() == g.read(), f"convert changed {name}"


def start_counting_reward_server(tmp):
    """A reward server of the test's own (the public protocol, Python's grpc) on loopback:
    1 for a response that is the ground truth, with components "correct", "style" (0.25)
    and "chars" (the response's length). Returns (server, address, sizes): sizes collects
    the item count of every Score call."""
    import threading
    from concurrent import futures
    import grpc
    from grpc_tools import protoc
    stubs = os.path.join(tmp, "reward_stubs")
    os.makedirs(stubs, exist_ok=True)
    proto_root = os.path.join(os.path.dirname(__file__), "..", "..", "proto")
    assert protoc.main(["grpc_tools.protoc", f"-I{proto_root}", f"--python_out={stubs}",
                        f"--grpc_python_out={stubs}",
                        os.path.join(proto_root, "lightrl/v1/reward.proto")]) == 0
    sys.path.insert(0, stubs)
    from lightrl.v1 import reward_pb2, reward_pb2_grpc
    sizes, lock = [], threading.Lock()

    class Judge(reward_pb2_grpc.RewardServiceServicer):
        def Score(self, request, context):
            with lock:
                sizes.append(len(request.items))
            response = reward_pb2.ScoreResponse()
            for item in request.items:
                assert "response_tokens" in item.metadata, item.metadata
                hit = 1.0 if item.response.strip() == item.ground_truth else 0.0
                r = response.results.add(id=item.id, score=hit)
                r.components.update({"correct": hit, "style": 0.25,
                                     "chars": float(len(item.response))})
            return response

        def Health(self, request, context):
            return reward_pb2.HealthResponse(serving=True, reward_kind="judge")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    reward_pb2_grpc.add_RewardServiceServicer_to_server(Judge(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}", sizes


def metric_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def case_reward_sources(runs, rng):
    # One built-in kind: its score and components under reward/<kind>, the same numbers as
    # the step's own reward and accuracy, and eval/reward/<kind> beside eval/accuracy.
    rows = metric_rows(runs.reference())
    rl_rows = [r for r in rows if "reward/mean" in r]
    assert len(rl_rows) == RL_STEPS, len(rl_rows)
    for r in rl_rows:
        assert r["reward/arithmetic"] == r["reward/mean"], r
        assert r["reward/arithmetic/correct"] == r["reward/accuracy"], r
        assert "reward/arithmetic/has_answer" in r, r
    eval_rows = [r for r in rows if "eval/accuracy" in r]
    assert eval_rows and all(r["eval/reward/arithmetic"] == r["eval/accuracy"] for r in eval_rows), eval_rows

    # A custom server beside a weighted built-in: each source's own (unweighted) score and
    # every component the server returns, for RL steps and eval; one Score call per step
    # and per evaluation, holding every response.
    server, address, sizes = start_counting_reward_server(runs.tmp)
    try:
        steps, eval_n = 2, 16
        config = runs.config("reward_sources", run__steps=steps, run__eval_every=1,
                             run__eval_samples=eval_n, checkpoint__every=0)
        config["reward"] = {"weights": {"arithmetic": 1.0},
                            "servers": {"judge": {"address": address, "weight": 0.5}}}
        config["algorithm"]["dynamic_sampling"] = False
        path = write_config(os.path.join(runs.tmp, "reward_sources.yaml"), config)
        run_ok("run", "--config", path)
    finally:
        server.stop(0)
    group_items = config["rollout"]["prompts_per_step"] * config["rollout"]["group_size"]
    # Evaluations at steps 0, 1 and 2 (the final one is step 2's), RL steps 1 and 2.
    assert sorted(sizes) == [eval_n] * 3 + [group_items] * steps, sizes
    run_dir = os.path.join(runs.tmp, "reward_sources")
    rows = metric_rows(run_dir)
    groups, _ = export_rollouts(os.path.join(run_dir, "rollouts"),
                                os.path.join(runs.tmp, "reward_sources.jsonl"))
    rl_rows = {r["step"]: r for r in rows if "reward/mean" in r}
    assert sorted(rl_rows) == [1, 2], sorted(rl_rows)
    for step, r in rl_rows.items():
        samples = [s for g in groups if g["step"] == step - 1 for s in g["samples"]]
        assert len(samples) == group_items, len(samples)
        def mean_of(component):
            return sum(s["reward_components"][component] for s in samples) / len(samples)
        assert r["reward/judge/style"] == 0.25, r
        assert math.isclose(r["reward/judge/chars"], mean_of("judge/chars"), rel_tol=1e-12), r
        assert math.isclose(r["reward/judge/correct"], mean_of("judge/correct"), rel_tol=1e-12), r
        # reward/judge is the server's own score; the logged component is weighted by 0.5.
        assert math.isclose(r["reward/judge"], 2 * mean_of("judge"), rel_tol=1e-12), r
        assert math.isclose(r["reward/arithmetic"], mean_of("arithmetic"), rel_tol=1e-12), r
        assert math.isclose(r["reward/mean"], r["reward/arithmetic"] + 0.5 * r["reward/judge"],
                            rel_tol=1e-9, abs_tol=1e-12), r
    eval_rows = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in eval_rows] == [0, 1, 2], eval_rows
    for r in eval_rows:
        for key in ("eval/reward/judge", "eval/reward/judge/correct", "eval/reward/judge/chars",
                    "eval/reward/arithmetic", "eval/reward/arithmetic/correct"):
            assert key in r, (key, r)
        assert r["eval/reward/judge/style"] == 0.25, r
        # eval/accuracy is the first "correct" component: the built-in's.
        assert r["eval/accuracy"] == r["eval/reward/arithmetic/correct"], r
    # A server may not take the name of one of the step's own reward metrics.
    config["reward"]["servers"] = {"accuracy": {"address": address}}
    config["run"]["output_dir"] = os.path.join(runs.tmp, "reward_reserved")
    path = write_config(os.path.join(runs.tmp, "reward_reserved.yaml"), config)
    proc = lightrl("run", "--config", path)
    assert proc.returncode != 0 and "reward.servers.accuracy" in proc.stderr, proc.stderr


CASES = {"resume": case_resume, "metrics": case_metrics, "rollouts": case_rollouts,
         "replay": case_replay, "checksums": case_checksums, "corrupt_log": case_corrupt_log,
         "metrics_resume": case_metrics_resume, "config": case_config,
         "standalone": case_standalone, "reward_sources": case_reward_sources,
         "sharded_resume": case_sharded_resume}


def main():
    seed = int(os.environ.get("TRAINER_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (TRAINER_TEST_SEED={seed} repeats the kill moments)")
    names = sys.argv[1:] or list(CASES)
    failed = []
    with tempfile.TemporaryDirectory(prefix="trainer_test.") as tmp:
        runs = Runs(tmp)
        for name in names:
            start = time.time()
            print(f"{name}:")
            try:
                CASES[name](runs, random.Random(f"{seed}-{name}"))
                print(f"{name}: ok ({time.time() - start:.1f} s)")
            except Exception:  # Report every case, then fail.
                failed.append(name)
                print(f"{name}: FAILED ({time.time() - start:.1f} s)\n{traceback.format_exc()}")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
