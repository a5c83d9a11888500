"""What a user watching `lightrl run` and `lightrl replay` sees and can do, with real
processes on the 2-layer toy model of trainer_test.py:

  health     a reward server address nobody listens on fails the run within seconds,
             before any output folder exists, naming reward.servers.NAME.address and the
             address; with a real `lightrl reward-worker` there the check passes.
  summary    the start-up summary (parameters, layout, plan, output folder, the
             `tensorboard --logdir` line) is printed once; SFT, RL and replay progress
             lines show the elapsed time and an ETA, evaluations the last one's time as
             their ETA and their own time after.
  sft_steps  SFT metrics are logged at SFT steps 1..N (sft/ names), RL metrics at RL steps
             1..M with the evaluation before RL at step 0; TensorBoard holds SFT as its
             own run (tensorboard/sft), so no SFT point sits at a negative or RL step.
  interrupt  SIGINT during SFT, and SIGTERM during RL, write a checkpoint at the next
             step's end and exit 130 / 143 saying how to continue; `--resume` then ends
             with the same metrics and weights as the run left alone; two SIGINTs in a
             row exit at once without a checkpoint.
  nproc      SIGTERM sent to the `--nproc 2` launcher alone reaches its ranks: rank 0
             checkpoints after the current RL step, the launcher exits 143, and `--resume
             --nproc 2` finishes the run.
  eval_every `run.eval_every: 0` evaluates before RL and at the end only.
  replay     `lightrl replay` evaluates every run.eval_every steps like the run; a replay
             with `--nproc 2` (two data-parallel learner processes on the CPU) trains and
             leaves every file of the source run byte-identical.

Run: LIGHTRL_BIN=build/rl/lightrl .venv/bin/python tests/python/run_ux_test.py [CASE ...]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trainer_test as tt  # noqa: E402  (the toy task, configs and run helpers)

BIN = tt.BIN
ENV = tt.ENV
SFT_STEPS = tt.SFT_STEPS
RL_STEPS = tt.RL_STEPS


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def steps_of(rows, key):
    return [row["step"] for row in rows if key in row]


def untimed(rows):
    """(step, name, value) of every logged value but wall times, in file order."""
    return [(row["step"], k, v) for row in rows for k, v in row.items()
            if k not in ("step", "time") and not tt.is_time_based(k)]


def wait_for(predicate, proc, what, timeout=tt.RUN_TIMEOUT_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def tensorboard_tags(logdir):
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()[event_accumulator.SCALARS]}


def case_health(runs):
    port = free_port()
    config = runs.config("health-bad")
    config["reward"] = {"kind": "arithmetic", "servers": {"judge": {"address": f"127.0.0.1:{port}"}}}
    path = tt.write_config(os.path.join(runs.tmp, "health-bad.yaml"), config)
    start = time.time()
    proc = tt.lightrl("run", "--config", path, "--health-timeout", "2")
    seconds = time.time() - start
    assert proc.returncode == 1, f"expected exit 1, got {proc.returncode}:\n{proc.stderr}"
    assert "reward.servers.judge.address" in proc.stderr and f"127.0.0.1:{port}" in proc.stderr, proc.stderr
    assert "no reward server answered within 2 s" in proc.stderr, proc.stderr
    assert seconds < 15, f"the bad address took {seconds:.1f} s to fail"
    assert not os.path.exists(config["run"]["output_dir"]), "the failed run wrote its output folder"
    print(f"  unreachable reward server: failed in {seconds:.1f} s naming the key and address")

    bad = tt.lightrl("run", "--config", path, "--health-timeout", "soon")
    assert bad.returncode == 2 and "--health-timeout must be seconds" in bad.stderr, bad.stderr

    # A real reward server there: the check passes and the run trains (one RL step).
    worker = subprocess.Popen([BIN, "reward-worker", "--listen", "127.0.0.1:0", "--kind", "arithmetic"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = worker.stdout.readline()
        assert line.startswith("listening on "), f"reward-worker: {line!r} {worker.stderr.read()}"
        config = runs.config("health-ok", run__steps=1, run__eval_every=0, sft__steps=0)
        config["reward"] = {"kind": "arithmetic", "servers": {"judge": {"address": line.split()[-1]}}}
        path = tt.write_config(os.path.join(runs.tmp, "health-ok.yaml"), config)
        tt.run_ok("run", "--config", path)
    finally:
        worker.kill()
        worker.wait()
    print("  a live reward-worker passes the check")


def case_summary(runs):
    config = runs.config("summary", logging__progress=True)
    path = tt.write_config(os.path.join(runs.tmp, "summary.yaml"), config)
    proc, _ = tt.run_ok("run", "--config", path)
    err = proc.stderr
    out = config["run"]["output_dir"]
    assert err.count("lightrl run: trainer-test\n") == 1, err
    assert f"tensorboard --logdir {out}/tensorboard" in err, err
    assert f"  output    {out}\n" in err, err
    assert " parameters (" in err and "1 learner process (data-parallel 1 x expert-parallel 1)" in err, err
    assert f"SFT {SFT_STEPS} steps, then RL {RL_STEPS} steps of 8 prompts x 4 samples" in err, err
    lines = err.splitlines()
    sft = [l for l in lines if l.startswith("[sft] step")]
    rl = [l for l in lines if l.startswith("[rl cispo] step")]
    assert len(sft) == SFT_STEPS and len(rl) == RL_STEPS, err
    for progress in (sft, rl):
        assert all("elapsed " in l for l in progress), progress
        assert all("ETA " in l for l in progress[:-1]) and "ETA" not in progress[-1], progress
    evals = [l for l in lines if l.startswith("[eval] step")]
    assert evals[0] == "[eval] step 0: 16 prompts", evals
    assert [l.split(":")[0] for l in evals] == ["[eval] step 0", "[eval] step 3", "[eval] step 6"], evals
    assert all(", ETA " in l for l in evals[1:]), evals
    assert any(l.startswith("eval at step 3: held-out accuracy") and l.endswith("s)") for l in lines), err
    print(f"  summary printed once; {len(sft)} SFT, {len(rl)} RL and {len(evals)} eval progress lines "
          "with elapsed/ETA")


def case_sft_steps(runs):
    ref = runs.reference()
    rows = metrics_rows(ref)
    assert steps_of(rows, "sft/loss") == list(range(1, SFT_STEPS + 1)), steps_of(rows, "sft/loss")
    assert steps_of(rows, "reward/mean") == list(range(1, RL_STEPS + 1))
    assert steps_of(rows, "eval/accuracy")[0] == 0
    assert min(row["step"] for row in rows) == 0, "a metric was logged at a negative step"
    top = tensorboard_tags(os.path.join(ref, "tensorboard"))
    sft = tensorboard_tags(os.path.join(ref, "tensorboard", "sft"))
    assert set(sft) == {"sft/loss", "sft/grad_norm", "sft/lr"}, sorted(sft)
    assert not any(t.startswith("sft/") for t in top), sorted(top)
    assert sft["sft/loss"] == list(range(1, SFT_STEPS + 1)), sft["sft/loss"]
    assert top["reward/mean"] == list(range(1, RL_STEPS + 1)), top["reward/mean"]
    print(f"  SFT at steps 1..{SFT_STEPS} (tensorboard/sft), RL at 1..{RL_STEPS}")


def case_interrupt(runs):
    ref = runs.reference()
    # Every checkpoint comes from the signal: checkpoint.every 0.
    config = runs.config("interrupt", checkpoint__every=0)
    path = tt.write_config(os.path.join(runs.tmp, "interrupt.yaml"), config)
    out = config["run"]["output_dir"]
    metrics = os.path.join(out, "metrics.jsonl")

    def logged(key, step):
        return os.path.exists(metrics) and any(row["step"] >= step and key in row for row in metrics_rows(out))

    # SIGINT in SFT, then SIGTERM in RL, each resumed.
    for sig, key, step, code in ((signal.SIGINT, "sft/loss", 3, 130), (signal.SIGTERM, "reward/mean", 2, 143)):
        args = ["run", "--config", path] + (["--resume"] if sig == signal.SIGTERM else [])
        proc = subprocess.Popen([BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=ENV)
        wait_for(lambda: logged(key, step), proc, f"{key} at step {step}")
        proc.send_signal(sig)
        err = proc.stderr.read()
        proc.wait()
        name = signal.Signals(sig).name
        assert proc.returncode == code, f"{name}: exit {proc.returncode}, want {code}:\n{err}"
        assert f"stopped by {name}" in err and "--resume" in err, err
        latest = tt.latest_checkpoint(out)
        assert latest is not None and latest in err, (latest, err)
        rl_step, sft_step = int(latest.split("-")[1]), int(latest.split("-")[3])
        if sig == signal.SIGINT:
            assert rl_step == 0 and 3 <= sft_step < SFT_STEPS, latest
        else:
            assert sft_step == SFT_STEPS and 2 <= rl_step < RL_STEPS, latest
        print(f"  {name}: exit {code}, checkpoint {latest}")
    tt.run_ok("run", "--config", path, "--resume")
    got, want = untimed(metrics_rows(out)), untimed(metrics_rows(ref))
    assert got == want, f"the interrupted run's metrics differ from the run left alone: " \
                        f"{[(g, w) for g, w in zip(got, want) if g != w][:5]}"
    final = f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}"
    weights = "model.safetensors"
    for f in os.listdir(os.path.join(ref, "checkpoints", final)):
        if f.endswith(".safetensors"):
            weights = f
    a = open(os.path.join(out, "checkpoints", final, weights), "rb").read()
    b = open(os.path.join(ref, "checkpoints", final, weights), "rb").read()
    assert a == b, "the interrupted and resumed run's final weights differ"
    print("  resumed twice: same metrics and final weights as the run left alone")

    # Two SIGINTs: out at once, no checkpoint. SFT steps of 2048 examples are long enough
    # that the second signal, sent as soon as the run has taken the first, arrives before
    # the current step (and its checkpoint) can end.
    config = runs.config("interrupt-twice", checkpoint__every=0)
    config["sft"]["batch_size"] = 2048
    path = tt.write_config(os.path.join(runs.tmp, "interrupt-twice.yaml"), config)
    out = config["run"]["output_dir"]
    metrics = os.path.join(out, "metrics.jsonl")
    proc = subprocess.Popen([BIN, "run", "--config", path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: logged("sft/loss", 1), proc, "the first SFT step")
    proc.send_signal(signal.SIGINT)
    err = ""
    for line in proc.stderr:
        err += line
        if "stopping after the current step" in line:
            break
    proc.send_signal(signal.SIGINT)
    err += proc.stderr.read()
    proc.wait()
    assert proc.returncode == 130 and "exiting at once" in err, (proc.returncode, err)
    assert tt.latest_checkpoint(out) is None, tt.latest_checkpoint(out)
    print("  two SIGINTs: exit 130 at once, no checkpoint")


def nproc_env():
    return {k: v for k, v in ENV.items()
            if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}


def case_nproc(runs):
    config = runs.config("nproc", checkpoint__every=0)
    path = tt.write_config(os.path.join(runs.tmp, "nproc.yaml"), config)
    out = config["run"]["output_dir"]
    metrics = os.path.join(out, "metrics.jsonl")
    for _ in range(3):
        # A session of its own: the signal reaches the launcher alone, as from kill or a
        # scheduler, not the whole process group as from a terminal.
        proc = subprocess.Popen([BIN, "run", "--config", path, "--nproc", "2"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=nproc_env(), start_new_session=True)
        try:
            wait_for(lambda: os.path.exists(metrics) and any("reward/mean" in r for r in metrics_rows(out)),
                     proc, "the first RL step")
        except AssertionError as e:
            # --nproc's free port was taken before rank 0's store bound it: nothing ran yet.
            if "address already in use" in str(e).lower():
                continue
            raise
        break
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    proc.wait()
    assert proc.returncode == 143, f"exit {proc.returncode}, want 143:\n{err}"
    assert "stopped by SIGTERM during RL" in err, err
    latest = tt.latest_checkpoint(out)
    assert latest is not None and latest.startswith("step-") and int(latest.split("-")[1]) >= 1, latest
    proc = subprocess.run([BIN, "run", "--config", path, "--nproc", "2", "--resume"], capture_output=True,
                          text=True, timeout=tt.RUN_TIMEOUT_S, env=nproc_env())
    assert proc.returncode == 0, f"--resume --nproc 2 failed ({proc.returncode}):\n{proc.stderr}"
    assert tt.latest_checkpoint(out) == f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}", tt.latest_checkpoint(out)
    assert steps_of(metrics_rows(out), "reward/mean") == list(range(1, RL_STEPS + 1))
    print(f"  SIGTERM to the launcher: exit 143 at {latest}; --resume --nproc 2 finished the run")


def case_eval_every(runs):
    config = runs.config("eval-never", run__eval_every=0)
    path = tt.write_config(os.path.join(runs.tmp, "eval-never.yaml"), config)
    tt.run_ok("run", "--config", path)
    rows = metrics_rows(config["run"]["output_dir"])
    assert steps_of(rows, "eval/accuracy") == [0, RL_STEPS], steps_of(rows, "eval/accuracy")
    ref_rows = metrics_rows(runs.reference())  # eval_every 3
    assert steps_of(ref_rows, "eval/accuracy") == [0, 3, 6], steps_of(ref_rows, "eval/accuracy")
    print("  eval_every 0: evaluated at step 0 and the end only; eval_every 3: at 0, 3, 6")


def case_replay(runs):
    ref = runs.reference()
    log = os.path.join(ref, "rollouts")
    before = tt.tree_hashes(ref)
    ref_yaml = os.path.join(runs.tmp, "reference.yaml")
    one = os.path.join(runs.tmp, "replay-one")
    proc, _ = tt.run_ok("replay", "--config", ref_yaml, "--rollouts", log, "--output", one)
    rows = metrics_rows(one)
    # Like the run (eval_every 3): before the first replayed step, at 3 and at 6 (the end).
    assert steps_of(rows, "eval/accuracy") == [0, 3, 6], steps_of(rows, "eval/accuracy")
    assert "eval at step 3: held-out accuracy" in proc.stderr, proc.stderr
    assert "lightrl replay: trainer-test" in proc.stderr and f"replay {RL_STEPS} logged steps" in proc.stderr

    two = os.path.join(runs.tmp, "replay-two")
    env = {k: v for k, v in ENV.items()
           if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    for _ in range(3):
        proc = subprocess.run([BIN, "replay", "--config", ref_yaml, "--rollouts", log, "--output", two,
                               "--nproc", "2"], capture_output=True, text=True, timeout=tt.RUN_TIMEOUT_S,
                              env=env)
        # --nproc's free port was taken before rank 0's store bound it: nothing ran yet.
        if "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, f"replay --nproc 2 failed ({proc.returncode}):\n{proc.stderr}"
    assert f"trained on {RL_STEPS} logged steps" in proc.stderr, proc.stderr
    assert tt.tree_hashes(ref) == before, "replay --nproc 2 changed the source run's folder"
    rows_two = metrics_rows(two)
    assert steps_of(rows_two, "loss/total") == list(range(1, RL_STEPS + 1)), steps_of(rows_two, "loss/total")
    # Two data-parallel ranks split each step's samples: from the same checkpoint the first
    # step's loss is one process's up to reduction order (later steps drift apart by it).
    first_one = next(r for r in rows if "loss/total" in r)
    first_two = next(r for r in rows_two if "loss/total" in r)
    assert abs(first_one["loss/total"] - first_two["loss/total"]) <= 1e-4 * max(1.0, abs(first_one["loss/total"])), \
        (first_one, first_two)
    assert all(r["loss/total"] is not None for r in rows_two if "loss/total" in r), rows_two
    assert tt.latest_checkpoint(two) == f"step-{RL_STEPS:06d}-sft-{SFT_STEPS:06d}", tt.latest_checkpoint(two)
    print("  replay evaluates every 3 steps; --nproc 2 replays the log with the source untouched")


CASES = {"health": case_health, "summary": case_summary, "sft_steps": case_sft_steps,
         "interrupt": case_interrupt, "nproc": case_nproc, "eval_every": case_eval_every,
         "replay": case_replay}


def main():
    names = sys.argv[1:] or list(CASES)
    failed = []
    with tempfile.TemporaryDirectory(prefix="run_ux_test.") as tmp:
        runs = tt.Runs(tmp)
        for name in names:
            start = time.time()
            print(f"{name}:")
            try:
                CASES[name](runs)
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
