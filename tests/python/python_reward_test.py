"""`lightrl run` with a reward given as a Python function (reward.servers.NAME.python) on
a 2-layer hybrid (hidden 32) learning single-digit addition on a CPU:

  run       the run starts reward/python/function_server.py over the user's file, scores
            every rollout and eval sample through it (the function sees the prompt, the
            response and the row's answer and extra fields as metadata), and each step's
            reward/mean and each eval's accuracy are the means of the function's scores
            over that phase's calls; the server stops when the run ends.
  bad_file  a file without the named function fails the run at start-up, before any
            checkpoint, naming the config key, the file and the function.

Run: LIGHTRL_BIN=build/rl/lightrl .venv/bin/python tests/python/python_reward_test.py [CASE ...]
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trainer_test as tt  # noqa: E402  (the toy task)

BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")
TOKENIZER = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                                         "toy", "tokenizer.json"))
ENV = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
RUN_TIMEOUT_S = 300
SFT_STEPS, RL_STEPS, PROMPTS, GROUP, EVAL_SAMPLES = 12, 2, 4, 4, 8

# Appends one JSON line per call to CALLS and its pid to PIDS; scores exact sums.
REWARD = '''
import json, os
CALLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.jsonl")
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pids"), "a") as f:
    f.write(f"{os.getpid()}\\n")

def sum_reward(prompt, response, metadata):
    with open(CALLS, "a") as f:
        f.write(json.dumps({"prompt": prompt, "response": response, "metadata": metadata}) + "\\n")
    correct = response.strip() == metadata["ground_truth"]
    return {"score": 1.0 if correct else 0.0, "correct": correct, "chars": len(response)}
'''


def write_task(task_dir):
    tt.write_task(task_dir, train_rows=200, eval_rows=20,
                  extra=lambda a, b: {"level": "easy" if a + b < 5 else "hard"})


def write_config(path, task_dir, output_dir, reward_file, function):
    # JSON is YAML: the run config reads it as is.
    config = {
        "run": {"name": "python-reward-test", "output_dir": output_dir, "seed": 3,
                "steps": RL_STEPS, "eval_every": RL_STEPS, "eval_samples": EVAL_SAMPLES},
        "model": {"init_config": os.path.join(task_dir, "model.json"), "init_seed": 5,
                  "tokenizer": TOKENIZER},
        "data": {"train": os.path.join(task_dir, "train.jsonl"),
                 "eval": os.path.join(task_dir, "eval.jsonl")},
        "rollout": {"group_size": GROUP, "prompts_per_step": PROMPTS, "max_new_tokens": 4,
                    "early_stop_window": 0},
        "reward": {"servers": {"sums": {"python": reward_file, "function": function}}},
        "algorithm": {"loss": "cispo", "max_refill_rounds": 0, "dynamic_sampling": False},
        "sft": {"steps": SFT_STEPS, "batch_size": 32, "lr": 0.01},
        "checkpoint": {"every": RL_STEPS, "keep": 1},
        "logging": {"progress": False, "tensorboard": False},
    }
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def lightrl(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=ENV)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def case_run(tmp):
    task = os.path.join(tmp, "task")
    write_task(task)
    reward_dir = os.path.join(tmp, "reward")
    os.makedirs(reward_dir)
    with open(os.path.join(reward_dir, "sums.py"), "w") as f:
        f.write(REWARD)
    out = os.path.join(tmp, "run")
    config = write_config(os.path.join(tmp, "run.yaml"), task, out,
                          os.path.join(reward_dir, "sums.py"), "sum_reward")
    start = time.time()
    proc = lightrl("run", "--config", config)
    assert proc.returncode == 0, f"lightrl run failed ({proc.returncode}):\n{proc.stderr}"
    assert "Python reward sums" in proc.stderr, proc.stderr

    with open(os.path.join(reward_dir, "calls.jsonl")) as f:
        calls = [json.loads(line) for line in f]
    # Every rollout of every RL step, and the eval samples, went through the function.
    assert len(calls) >= RL_STEPS * PROMPTS * GROUP + EVAL_SAMPLES, len(calls)
    for call in calls:
        a, b = call["prompt"].rstrip("=").split("+")
        meta = call["metadata"]
        assert meta["ground_truth"] == str(int(a) + int(b)), call
        assert meta["level"] == ("easy" if int(a) + int(b) < 5 else "hard"), call
        assert isinstance(call["response"], str)
    right = [c["response"].strip() == c["metadata"]["ground_truth"] for c in calls]

    # The calls come in the run's order: eval before RL, each step's groups, eval at the
    # end; each phase's metric is the mean of the function's scores over its calls.
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evals = [r for r in rows if "eval/accuracy" in r]
    rl = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in evals] == [0, RL_STEPS], evals
    assert [r["step"] for r in rl] == list(range(1, RL_STEPS + 1)), rl
    per_step = PROMPTS * GROUP
    assert len(calls) == 2 * EVAL_SAMPLES + RL_STEPS * per_step, len(calls)
    mean = lambda xs: sum(xs) / len(xs)
    assert abs(evals[0]["eval/accuracy"] - mean(right[:EVAL_SAMPLES])) < 1e-9, evals[0]
    assert abs(evals[1]["eval/accuracy"] - mean(right[-EVAL_SAMPLES:])) < 1e-9, evals[1]
    for k, r in enumerate(rl):
        first = EVAL_SAMPLES + k * per_step
        assert abs(r["reward/mean"] - mean(right[first:first + per_step])) < 1e-9, (k, r)

    # The server ran for the run only.
    with open(os.path.join(reward_dir, "pids")) as f:
        pids = [int(line) for line in f]
    assert pids and not any(alive(p) for p in pids), pids
    log = os.path.join(out, "logs", "reward-python-sums.log")
    assert os.path.exists(log), os.listdir(os.path.join(out, "logs"))
    print(f"  {len(calls)} calls ({sum(right)} right), rewards "
          f"{[r['reward/mean'] for r in rl]}, run took {time.time() - start:.1f} s")


def case_bad_file(tmp):
    task = os.path.join(tmp, "task")
    write_task(task)
    reward = os.path.join(tmp, "misnamed.py")
    with open(reward, "w") as f:
        f.write("def score(prompt, response, metadata):\n    return 1.0\n")
    out = os.path.join(tmp, "bad-run")
    config = write_config(os.path.join(tmp, "bad.yaml"), task, out, reward, "sum_reward")
    start = time.time()
    proc = lightrl("run", "--config", config)
    assert proc.returncode != 0, proc.stderr
    for fragment in ("reward.servers.sums", reward, "(function sum_reward)",
                     "defines no function 'sum_reward' (it defines: score)"):
        assert fragment in proc.stderr, f"{fragment!r} not in:\n{proc.stderr}"
    assert not os.path.exists(os.path.join(out, "checkpoints")), os.listdir(out)
    # A key that names both an address and a file is a config error with file:line.
    both = os.path.join(tmp, "both.yaml")
    with open(both, "w") as f:
        f.write(open(config).read().replace('"function": "sum_reward"',
                                            '"function": "score", "address": "127.0.0.1:1"'))
    proc = lightrl("run", "--config", both)
    assert proc.returncode != 0 and "both.yaml:" in proc.stderr and \
        "reward.servers.sums: give exactly one of address and python (both given)" in proc.stderr, \
        proc.stderr
    print(f"  refused in {time.time() - start:.1f} s: {proc.stderr.strip().splitlines()[-1]}")


CASES = {"run": case_run, "bad_file": case_bad_file}


def main(argv):
    names = argv[1:] or list(CASES)
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"lightrl_python_reward_{name}_") as tmp:
            print(f"python_reward_test: {name}")
            CASES[name](tmp)
    print("python_reward_test: ok")


if __name__ == "__main__":
    main(sys.argv)
