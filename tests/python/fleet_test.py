"""The rollout fleet with real processes on loopback:

  kill_worker   `lightrl run` in spawn mode with 3 rollout workers; the one serving the
                newest weights is frozen as the next step's groups go out, then killed
                with SIGKILL. Its groups are requeued on the others (or, had the freeze
                met a weight push, the push goes on with the live ones), the run
                finishes, every prompt of the epoch is trained exactly once, and every
                group carries the weight version of its step (the fleet is on-policy: no
                group mixes versions).
  restart       cluster mode: 2 workers started by hand register with the controller's
                coordinator; the controller is killed with SIGKILL mid-run and resumed
                from its checkpoint; the same worker processes serve the resumed run.
  reward_workers  spawn mode with fleet.spawn_reward_workers: `lightrl run` also starts a
                `lightrl reward-worker` per built-in reward kind (arithmetic, format), which
                register with the coordinator; the run scores through them over gRPC and
                logs the same rewards, step for step, as the same run scoring in process.
  kill_reward_worker  spawn mode with a spawned reward worker and
                fleet.reward_worker_restarts: 1: the worker killed with SIGKILL mid-run is
                restarted on its address and the run goes on scoring; killed again, past
                its one restart, the run stops with a message naming the worker, how it
                ended and the key.
  instances     spawn mode with fleet.rollout_tp 2, then fleet.rollout_ep 2, then both, then
                rollout_tp 2 with rollout_ep 4: the run starts one rollout worker as a
                tensor-parallel, an expert-parallel, a TP x EP instance of 2 processes (rank
                0 serves and registers, rank 1 follows), then one of 4 whose two TP groups
                each generate their share of every batch, their MoE blocks over all 4
                (attention data parallelism), and every
                step's weights reach both ranks: the instance's
                logprobs equal the learner's to FP32 rounding at every step, while the
                weights the instance started from (before the SFT warm-up) give its last
                step's tokens other logprobs.
  sharded_learner  `lightrl run --nproc 2` with the experts sharded over the learner's
                ranks (parallel.ep 2) and a spawned fleet: rank 0 holds its shard alone and
                gathers every update into host memory for the gRPC push (no whole model on
                any device). A plain worker's logprobs equal the learner's to FP32 rounding
                at every step; in numerics.batch_invariant an expert-parallel instance of 2
                processes (its own split of the experts from the pushed tensors) gives the
                learner's bits (mismatch exactly 0); fleet.weight_sync nccl is refused by
                name.
  batch_invariant  spawn mode with 2 rollout workers and numerics.batch_invariant (then an
                 expert-parallel and a tensor-parallel instance of 2 processes, and a tp 2 x
                 ep 4 instance of 4, in the mode): the
                workers take the mode with the weights, and every step's learner logprobs
                equal the workers' bit for bit (the mismatch metrics are exactly 0), while
                the same run without the mode shows a mismatch.

Run: LIGHTRL_BIN=build/rl/lightrl .venv/bin/python tests/python/fleet_test.py [CASE ...]
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

BIN = os.path.abspath(os.environ.get("LIGHTRL_BIN", "build/rl/lightrl"))
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOKENIZER = os.path.join(ROOT, "examples", "toy", "tokenizer.json")
MODEL = os.path.join(ROOT, "configs", "models", "toy-arithmetic.json")
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TIMEOUT_S = 240


def write_yaml(path, config):
    # JSON is YAML: the loader reads it as flow mappings.
    with open(path, "w") as f:
        json.dump(config, f, indent=1)


def make_data(task_dir, n):
    path = os.path.join(task_dir, "train.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            a, b = (i * 7) % 50, (i * 13) % 40
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return path


def base_config(task_dir, out, steps, prompts_per_step, fleet):
    return {
        "run": {"output_dir": out, "seed": 5, "steps": steps},
        "model": {"init_config": MODEL, "init_seed": 2, "tokenizer": TOKENIZER},
        "data": {"train": make_data(task_dir, steps * prompts_per_step), "shuffle": True},
        "rollout": {"group_size": 4, "prompts_per_step": prompts_per_step,
                    "max_new_tokens": 24, "early_stop_window": 0},
        "algorithm": {"dynamic_sampling": False},
        "optimizer": {"lr": 0.001},
        "checkpoint": {"every": 1, "keep": 2},
        "logging": {"tensorboard": False, "progress": False},
        "fleet": fleet,
    }


def metrics(out):
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def child_pids(parent, needle):
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and needle in cmd:
            pids.append(int(entry))
    return pids


def exported_groups(out, tmp):
    path = os.path.join(tmp, "groups.jsonl")
    proc = subprocess.run([BIN, "rollouts", "export", "--rollouts", os.path.join(out, "rollouts"),
                           "--output", path], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    with open(path) as f:
        return [json.loads(line) for line in f]


def serving_worker(out, workers):
    """The spawned worker ("rollout-local-N") that serves the newest weight version (its
    log's last "serving weight version"), so that it takes the next groups; None before
    any serves."""
    best, name = -1, None
    for i in range(workers):
        worker = f"rollout-local-{i}"
        try:
            with open(os.path.join(out, "logs", f"{worker}.log")) as f:
                served = [int(line.rsplit(" ", 1)[1]) for line in f
                          if "serving weight version" in line]
        except (OSError, ValueError):
            continue
        if served and served[-1] > best:
            best, name = served[-1], worker
    return name


def kill_serving_worker(controller, out, workers):
    """Freezes a worker that serves the newest weights (so the run's next groups go to it,
    or its next weight push), then kills it; returns its name."""
    name = serving_worker(out, workers)
    assert name is not None, "no worker serves weights"
    victims = child_pids(controller.pid, name)
    assert len(victims) == 1, f"expected one worker {name}, got {victims}"
    # Frozen, the worker still holds its connections: the groups sent to it cannot
    # finish. Killing it then loses them mid-generation.
    os.kill(victims[0], signal.SIGSTOP)
    time.sleep(1.5)
    os.kill(victims[0], signal.SIGKILL)
    return name


def check_worker_death(text, rows, name):
    """The death was counted, and found either by a group call (its groups are requeued) or,
    when the freeze fell on a weight push, by that push (no group was on it)."""
    assert rows[-1]["fleet/worker_failures"] >= 1
    found = [l for l in text.splitlines() if f"rollout worker {name} " in l and "failed:" in l]
    assert len(found) == 1, f"expected one failure of {name}:\n{text[-3000:]}"
    if ": group " in found[0]:
        assert rows[-1]["fleet/groups_requeued"] >= 1, f"no group was requeued:\n{text[-2000:]}"
        return "its groups were requeued"
    assert ": UpdateWeights to version " in found[0] or ": Health" in found[0], found[0]
    return "it died between steps: found by the weight push"


def case_kill_worker(tmp):
    out = os.path.join(tmp, "run")
    steps, pps = 8, 6
    config = base_config(tmp, out, steps, pps,
                         {"mode": "spawn", "rollout_workers": 3, "worker_capacity": 2})
    write_yaml(os.path.join(tmp, "run.yaml"), config)
    log = open(os.path.join(tmp, "controller.log"), "w")
    controller = subprocess.Popen([BIN, "run", "--config", os.path.join(tmp, "run.yaml")],
                                  stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_for(lambda: len(metrics(out)) >= 2, TIMEOUT_S, "two RL steps")
        seen = len(metrics(out))
        name = kill_serving_worker(controller, out, 3)
        controller.wait(timeout=TIMEOUT_S)
    finally:
        if controller.poll() is None:
            controller.kill()
        log.close()
    text = open(os.path.join(tmp, "controller.log")).read()
    assert controller.returncode == 0, f"run failed after the worker died:\n{text[-3000:]}"
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1)), [r["step"] for r in rows]
    how = check_worker_death(text, rows, name)
    groups = exported_groups(out, tmp)
    prompts = [g["prompt_text"] for g in groups]
    with open(config["data"]["train"]) as f:
        dataset = [json.loads(line)["prompt"] for line in f]
    assert sorted(prompts) == sorted(dataset), "each prompt of the epoch must be trained exactly once"
    for g in groups:
        assert g["policy_version"] == g["step"], (g["group_id"], g["step"], g["policy_version"])
        assert len(g["samples"]) == 4
    # The survivors did all the work after the kill; none was left running.
    wait_for(lambda: not child_pids(controller.pid, "rollout-worker"), 15, "workers to exit")
    print(f"  {name} killed after step {seen}: {how}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def case_restart(tmp):
    out = os.path.join(tmp, "run")
    port = free_port()
    address = f"127.0.0.1:{port}"
    steps, pps = 8, 4
    config = base_config(tmp, out, steps, pps,
                         {"mode": "cluster", "coordinator_address": address, "min_workers": 2,
                          "worker_wait_s": 60})
    write_yaml(os.path.join(tmp, "run.yaml"), config)
    workers, logs = [], []
    for k in range(2):
        logs.append(open(os.path.join(tmp, f"worker{k}.log"), "w"))
        workers.append(subprocess.Popen(
            [BIN, "rollout-worker", "--coordinator", address, "--worker-id", f"w{k}",
             "--tokenizer", TOKENIZER, "--capacity", "2"],
            stdout=logs[-1], stderr=subprocess.STDOUT, env=ENV))
    try:
        clog = open(os.path.join(tmp, "controller1.log"), "w")
        first = subprocess.Popen([BIN, "run", "--config", os.path.join(tmp, "run.yaml")],
                                 stdout=clog, stderr=subprocess.STDOUT, env=ENV)
        wait_for(lambda: len(metrics(out)) >= 3, TIMEOUT_S, "three RL steps")
        first.kill()
        first.wait()
        clog.close()
        killed_at = len(metrics(out))
        assert killed_at < steps, "the run ended before it could be killed"
        clog = open(os.path.join(tmp, "controller2.log"), "w")
        second = subprocess.run([BIN, "run", "--config", os.path.join(tmp, "run.yaml"), "--resume"],
                                stdout=clog, stderr=subprocess.STDOUT, env=ENV, timeout=TIMEOUT_S)
        clog.close()
        text = open(os.path.join(tmp, "controller2.log")).read()
        assert second.returncode == 0, f"resumed run failed:\n{text[-3000:]}"
        assert "resumed from" in text, text[-2000:]
        for k, w in enumerate(workers):
            assert w.poll() is None, f"worker w{k} died with the controller"
        rows = metrics(out)
        assert rows[-1]["step"] == steps, rows[-1]
        assert rows[-1]["fleet/workers"] == 2, rows[-1]
        for k in range(2):
            wlog = open(os.path.join(tmp, f"worker{k}.log")).read()
            # Registered with both controllers, and served the resumed run's versions.
            assert wlog.count("registered with coordinator") >= 2, wlog[-2000:]
            assert f"serving weight version {steps}" in wlog, wlog[-2000:]
        groups = exported_groups(out, tmp)
        assert {g["step"] for g in groups} == set(range(steps))
        for g in groups:
            assert g["policy_version"] == g["step"], (g["group_id"], g["policy_version"])
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
        for f in logs:
            f.close()


def case_reward_workers(tmp):
    runs = {}
    for spawn in (False, True):
        out = os.path.join(tmp, f"out-{spawn}")
        config = base_config(tmp, out, 3, 4, {"mode": "spawn", "rollout_workers": 1,
                                              "spawn_reward_workers": spawn})
        config["reward"] = {"weights": {"arithmetic": 1.0, "format": 0.25}}
        path = os.path.join(tmp, f"run-{spawn}.yaml")
        write_yaml(path, config)
        proc = subprocess.run([BIN, "run", "--config", path], env=ENV, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[spawn] = metrics(out)
        logs = sorted(os.listdir(os.path.join(out, "logs")))
        reward_logs = [f for f in logs if f.startswith("reward-local-")]
        if spawn:
            assert reward_logs == ["reward-local-arithmetic.log", "reward-local-format.log"], logs
            assert runs[spawn][-1]["fleet/reward_workers"] == 2, runs[spawn][-1]
        else:
            assert reward_logs == [], logs
            assert runs[spawn][-1]["fleet/reward_workers"] == 0, runs[spawn][-1]
    rewards = {spawn: [(r["step"], r["reward/mean"]) for r in rows if "reward/mean" in r]
               for spawn, rows in runs.items()}
    assert len(rewards[True]) == 3, rewards
    assert rewards[True] == rewards[False], rewards


def case_kill_reward_worker(tmp):
    out = os.path.join(tmp, "run")
    config = base_config(tmp, out, 12, 4, {"mode": "spawn", "rollout_workers": 1,
                                           "spawn_reward_workers": True,
                                           "reward_worker_restarts": 1})
    config["checkpoint"] = {"every": 100, "keep": 1}
    write_yaml(os.path.join(tmp, "run.yaml"), config)
    log_path = os.path.join(tmp, "controller.log")
    log = open(log_path, "w")
    controller = subprocess.Popen([BIN, "run", "--config", os.path.join(tmp, "run.yaml")],
                                  stdout=log, stderr=subprocess.STDOUT, env=ENV)

    def kill_reward_worker():
        workers = child_pids(controller.pid, "reward-local-arithmetic")
        assert len(workers) == 1, f"expected one reward worker, got {workers}"
        os.kill(workers[0], signal.SIGKILL)
        return workers[0]

    try:
        wait_for(lambda: len(metrics(out)) >= 2, TIMEOUT_S, "two RL steps")
        first = kill_reward_worker()
        killed_at = len(metrics(out))
        # Scoring goes on through the restarted worker.
        wait_for(lambda: len(metrics(out)) >= killed_at + 2, TIMEOUT_S, "two steps after the kill")
        text = open(log_path).read()
        assert (f"reward worker reward-local-arithmetic (pid {first}" in text
                and "killed by signal 9" in text
                and "restarted reward worker reward-local-arithmetic" in text), text[-3000:]
        kill_reward_worker()
        controller.wait(timeout=TIMEOUT_S)
    finally:
        if controller.poll() is None:
            controller.kill()
        log.close()
    text = open(log_path).read()
    assert controller.returncode != 0, f"the run went on past the restart bound:\n{text[-3000:]}"
    assert "reward-local-arithmetic" in text and \
        "after 1 restart(s); fleet.reward_worker_restarts = 1 allows no more" in text, text[-3000:]
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 12, steps
    wait_for(lambda: not child_pids(controller.pid, "worker"), 15, "workers to exit")


def tp_model(tmp):
    """The test model with a vocabulary that splits in two, written under tmp: its path."""
    with open(MODEL) as f:
        model = json.load(f)
    model["vocab_size"] = 258  # the tokenizer's 257 padded to split in two
    model_path = os.path.join(tmp, "model-tp.json")
    with open(model_path, "w") as f:
        json.dump(model, f)
    return model_path


# Instance kinds: (rollout_tp, rollout_ep, how the followers name the instance).
INSTANCES = {"tp": (2, 1, "tp 2"), "ep": (1, 2, "ep 2"), "tpep": (2, 2, "tp x ep 2"),
             "tp2ep4": (2, 4, "tp 2 x ep 4")}


def check_instance(tmp, kind):
    """`kind`: tp, ep, tpep (both over the same 2 ranks) or tp2ep4 (two TP groups of 2
    generating apart, their experts split over all 4 ranks)."""
    out = os.path.join(tmp, f"out-{kind}")
    model_path = tp_model(tmp)
    tp, ep, name = INSTANCES[kind]
    fleet = {"mode": "spawn", "rollout_workers": 1}
    if tp > 1:
        fleet["rollout_tp"] = tp
    if ep > 1:
        fleet["rollout_ep"] = ep
    config = base_config(tmp, out, 3, 4, fleet)
    config["model"]["init_config"] = model_path
    # A warm-up that moves the weights well away from those the instance starts with.
    config["sft"] = {"steps": 4, "batch_size": 8, "lr": 0.01}
    write_yaml(os.path.join(tmp, f"run-{kind}.yaml"), config)
    proc = subprocess.run([BIN, "run", "--config", os.path.join(tmp, f"run-{kind}.yaml")], env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = os.path.join(out, "logs")
    ranks = max(tp, ep)
    assert sorted(f for f in os.listdir(logs) if f.startswith("rollout-local-")) == \
        sorted([f"rollout-local-0-rank{r}.log" for r in range(1, ranks)] +
               ["rollout-local-0.log"]), os.listdir(logs)
    for r in range(1, ranks):
        follower = open(os.path.join(logs, f"rollout-local-0-rank{r}.log")).read()
        assert f"following rank 0 of the {name} instance" in follower, follower[-2000:]
    rows = [r for r in metrics(out) if "policy/train_infer_logprob_abs_diff_max" in r]
    assert [r["step"] for r in rows] == [1, 2, 3], rows
    diffs = [r["policy/train_infer_logprob_abs_diff_max"] for r in rows]
    assert all(d < 1e-4 for d in diffs), diffs
    moved = starting_weights_moved(out, tmp, kind)
    assert moved > 1e-2, moved
    print(f"  {name} instance: engine-vs-learner max |logprob diff| per step {diffs}; the "
          f"starting weights' logprobs differ by up to {moved:.3f}")


def starting_weights_moved(out, tmp, name):
    """The last step's samples scored by the weights the spawned instance was started with
    (run.output_dir/rollout-model): the largest |difference| from the logprobs it sampled
    them with."""
    last = [g for g in exported_groups(out, tmp) if g["step"] == 2]
    samples = [(g["prompt_tokens"], s) for g in last for s in g["samples"]]
    with open(os.path.join(tmp, f"tokens-{name}.jsonl"), "w") as f:
        for prompt, s in samples:
            f.write(json.dumps({"tokens": prompt + s["tokens"]}) + "\n")
    scored = os.path.join(tmp, f"scored-{name}.jsonl")
    p = subprocess.run([BIN, "logprobs", "--model", os.path.join(out, "rollout-model"),
                        "--input", os.path.join(tmp, f"tokens-{name}.jsonl"), "--output", scored],
                       capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S)
    assert p.returncode == 0, p.stderr
    with open(scored) as f:
        initial = [json.loads(line)["logprobs"] for line in f]
    return max(abs(a - b) for (prompt, s), lp in zip(samples, initial)
               for a, b in zip(s["logprobs"], lp[len(prompt):]))


def case_instances(tmp):
    for kind in INSTANCES:
        check_instance(tmp, kind)


def case_batch_invariant(tmp):
    mismatch = {}
    for mode in (True, False):
        out = os.path.join(tmp, f"out-{mode}")
        config = base_config(tmp, out, 3, 6, {"mode": "spawn", "rollout_workers": 2,
                                              "worker_capacity": 2})
        config["numerics"] = {"batch_invariant": mode}
        path = os.path.join(tmp, f"run-{mode}.yaml")
        write_yaml(path, config)
        proc = subprocess.run([BIN, "run", "--config", path], env=ENV, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [r for r in metrics(out) if "policy/train_infer_logprob_abs_diff_max" in r]
        assert [r["step"] for r in rows] == [1, 2, 3], rows
        # Both workers serve: a step's 6 groups exceed one worker's capacity of 2.
        logs = os.path.join(out, "logs")
        for k in range(2):
            text = open(os.path.join(logs, f"rollout-local-{k}.log")).read()
            assert "listening on" in text, text[-2000:]
        mismatch[mode] = [(r["policy/train_infer_logprob_abs_diff_max"],
                           r["policy/train_infer_logprob_abs_diff"],
                           r["policy/train_infer_kl"]) for r in rows]
    assert all(m == (0.0, 0.0, 0.0) for m in mismatch[True]), mismatch
    assert any(m[0] > 0 for m in mismatch[False]), mismatch
    print(f"  batch_invariant: mismatch (max, mean, kl) per step {mismatch[True]} with the "
          f"mode, {mismatch[False]} without")
    # An expert-parallel and a tensor-parallel instance of 2 processes (each rank its
    # experts, or its heads and vocabulary rows), and one of 4 with two TP groups over
    # shared experts (attention data parallelism), in the mode.
    model_path = tp_model(tmp)
    for kind in ("ep", "tp", "tp2ep4"):
        tp, ep, name = INSTANCES[kind]
        out = os.path.join(tmp, f"out-{kind}")
        fleet = {"mode": "spawn", "rollout_workers": 1}
        fleet.update({k: v for k, v in (("rollout_tp", tp), ("rollout_ep", ep)) if v > 1})
        config = base_config(tmp, out, 3, 4, fleet)
        config["numerics"] = {"batch_invariant": True}
        if tp > 1:
            config["model"]["init_config"] = model_path
        path = os.path.join(tmp, f"run-{kind}.yaml")
        write_yaml(path, config)
        proc = subprocess.run([BIN, "run", "--config", path], env=ENV, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-3000:]
        follower = open(os.path.join(out, "logs", "rollout-local-0-rank1.log")).read()
        assert f"following rank 0 of the {name} instance" in follower, follower[-2000:]
        rows = [r for r in metrics(out) if "policy/train_infer_logprob_abs_diff_max" in r]
        got = [(r["policy/train_infer_logprob_abs_diff_max"],
                r["policy/train_infer_logprob_abs_diff"], r["policy/train_infer_kl"]) for r in rows]
        assert [r["step"] for r in rows] == [1, 2, 3] and all(m == (0.0, 0.0, 0.0) for m in got), \
            (kind, got)
        print(f"  batch_invariant in a {name} instance: mismatch per step {got}")


def case_sharded_learner(tmp):
    runs = (("plain", {"mode": "spawn", "rollout_workers": 1}, False),
            ("ep_instance", {"mode": "spawn", "rollout_workers": 1, "rollout_ep": 2}, True))
    for name, fleet, invariant in runs:
        out = os.path.join(tmp, f"out-{name}")
        config = base_config(tmp, out, 3, 4, fleet)
        config["parallel"] = {"ep": 2}
        config["numerics"] = {"batch_invariant": invariant}
        path = os.path.join(tmp, f"run-{name}.yaml")
        write_yaml(path, config)
        proc = subprocess.run([BIN, "run", "--config", path, "--nproc", "2"], env=ENV,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "pushed from the shards gathered into host memory" in proc.stderr, proc.stderr[-3000:]
        rows = [r for r in metrics(out) if "policy/train_infer_logprob_abs_diff_max" in r]
        assert [r["step"] for r in rows] == [1, 2, 3], rows
        diffs = [r["policy/train_infer_logprob_abs_diff_max"] for r in rows]
        if invariant:
            follower = open(os.path.join(out, "logs", "rollout-local-0-rank1.log")).read()
            assert "following rank 0 of the ep 2 instance" in follower, follower[-2000:]
            assert all(d == 0.0 for d in diffs), diffs
            # The instance started from a sharded checkpoint of the learner's first weights
            # (written by both ranks); the pushes moved it well away from them.
            assert os.path.exists(os.path.join(out, "rollout-model", "model.sharded.index.json"))
            moved = starting_weights_moved(out, tmp, name)
            assert moved > 1e-3, moved
            diffs.append(f"starting weights off by {moved:.3f}")
        else:
            assert all(d < 1e-4 for d in diffs), diffs
        # Weight versions 1..3 reached the workers: each step's groups came from the
        # update before it.
        versions = sorted({g["policy_version"] for g in exported_groups(out, tmp)})
        assert versions == [0, 1, 2], versions
        print(f"  sharded learner (ep 2 on 2 ranks), {name} fleet worker: engine-vs-learner "
              f"max |logprob diff| per step {diffs}")
    config = base_config(tmp, os.path.join(tmp, "out-nccl"), 1, 4,
                         {"mode": "spawn", "rollout_workers": 1, "weight_sync": "nccl"})
    config["parallel"] = {"ep": 2}
    path = os.path.join(tmp, "run-nccl.yaml")
    write_yaml(path, config)
    proc = subprocess.run([BIN, "run", "--config", path, "--nproc", "2"], env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    message = ("fleet.weight_sync: nccl broadcasts a whole model from the learner's GPU, but "
               "this learner is sharded")
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
    print(f"  fleet.weight_sync nccl with a sharded learner: {message} ...")


CASES = {"kill_worker": case_kill_worker, "restart": case_restart,
         "reward_workers": case_reward_workers, "kill_reward_worker": case_kill_reward_worker,
         "instances": case_instances, "batch_invariant": case_batch_invariant,
         "sharded_learner": case_sharded_learner}


def run_cases(cases, prefix, argv):
    """Runs the named cases (all when none are named), each in a fresh temporary directory
    kept for a failure; returns the exit status."""
    names = argv or list(cases)
    failed = 0
    for name in names:
        tmp = tempfile.mkdtemp(prefix=f"{prefix}-{name}-")
        start = time.time()
        try:
            cases[name](tmp)
            print(f"PASS {name} ({time.time() - start:.1f} s)")
        except Exception:
            failed += 1
            print(f"FAIL {name} ({time.time() - start:.1f} s), files in {tmp}")
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cases(CASES, "lightrl-fleet", sys.argv[1:]))
