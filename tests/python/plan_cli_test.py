"""`lightrl plan` end to end: the shipped MiniMax-M1 config on 512 H800s parses as JSON,
fits in 80 GB per GPU on both roles, and its figures agree with sums done here; bad flags
and configs exit non-zero naming the flag or key. Runs from the repository root.

Run: LIGHTRL_BIN=build/rl/lightrl python3 tests/python/plan_cli_test.py
"""
import json
import os
import shutil
import subprocess
import tempfile

BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")
CONFIG = "configs/minimax-m1-512xh800.yaml"


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True)


def expect_error(proc, *needles):
    assert proc.returncode != 0, f"expected failure, got success:\n{proc.stdout[:2000]}"
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in error message:\n{proc.stderr}"
    print("  ok:", proc.stderr.strip().splitlines()[-1][:160])


def main():
    proc = run("plan", "--config", CONFIG, "--gpus", "512", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["fits"] is True, plan["warnings"]
    for role in ("learner", "rollout"):
        mem = plan["memory"][role]
        assert mem["capacity_gb"] == 80, mem
        assert 0 < mem["total_gb"] <= 80, (role, mem["total_gb"])
        terms = sum(t["value"] for t in mem["terms_bytes"]) / 1e9
        assert abs(terms - mem["total_gb"]) < 1e-6 * terms, (role, terms, mem["total_gb"])
        assert all(t["basis"] in ("computed", "assumed") for t in mem["terms_bytes"])
    layout = plan["layout"]
    assert layout["gpus"] == 512 and layout["nodes"] == 64
    assert layout["rollout"]["gpus"] + layout["learner"]["gpus"] == 512
    learner = layout["learner"]
    assert learner["tp"] * learner["dp"] == learner["gpus"]
    assert learner["ep"] * learner["expert_tp"] * learner["expert_dp"] == learner["gpus"]
    assert 32 % learner["ep"] == 0
    params = plan["parameters"]
    assert abs(params["total"] / 456e9 - 1) < 0.01, params["total"]
    assert abs(params["active_non_embedding"] / 45.9e9 - 1) < 0.01, params
    t = plan["time"]
    assert t["step_s"] > 0
    assert abs(t["generation_s"] + t["training_s"] + t["weight_sync_s"] - t["step_s"]) < 1e-6 * t["step_s"]
    bases = {f["basis"] for f in plan["rates"]}
    assert {"measured", "extrapolated", "assumed"} <= bases, bases
    sources = " ".join(f["note"] for f in plan["rates"])
    assert "bench/lightning/RESULTS.md" in sources and "device/README.md" in sources
    print(f"  ok: 512 x H800 fits: learner {plan['memory']['learner']['total_gb']:.1f} GB, "
          f"rollout {plan['memory']['rollout']['total_gb']:.1f} GB, step {t['step_s'] / 3600:.2f} h")

    text = run("plan", "--config", CONFIG, "--gpus", "512")
    assert text.returncode == 0, text.stderr
    for needle in ("Layout", "Memory per learner GPU", "Memory per rollout GPU", "[measured]",
                   "[extrapolated]", "[assumed]", "Step:"):
        assert needle in text.stdout, needle
    # The rollout instances as the fleet keys that spawn them: TP groups of `tp` inside an
    # EP group of `ep` (attention data parallelism), one worker per EP group.
    rollout = layout["rollout"]
    assert rollout["ep"] % rollout["tp"] == 0 and rollout["ep"] == rollout["instance_gpus"], rollout
    keys = (f"rollout as run config keys: fleet: {{mode: spawn, rollout_workers: "
            f"{rollout['instances']}, rollout_tp: {rollout['tp']}, rollout_ep: {rollout['ep']}}}")
    assert keys in text.stdout, text.stdout

    expect_error(run("plan", "--config", CONFIG, "--gpus", "500"),
                 "--gpus must be a positive multiple of plan.hardware.gpus_per_node (8), got 500")
    expect_error(run("plan", "--config", CONFIG), "--gpus is required")
    expect_error(run("plan", "--config", CONFIG, "--gpus", "many"), "--gpus must be an integer")

    root = tempfile.mkdtemp(prefix="lightrl_plan_")
    try:
        shutil.copytree("configs/models", os.path.join(root, "models"))
        with open(CONFIG) as f:
            yaml = f.read()

        def write(text):
            path = os.path.join(root, "x.yaml")
            with open(path, "w") as f:
                f.write(text)
            return path

        bad_ep = write(yaml.replace("learner_ep: 32", "learner_ep: 5"))
        line = yaml.replace("learner_ep: 32", "learner_ep: 5").split("\n").index("    learner_ep: 5") + 1
        expect_error(run("plan", "--config", bad_ep, "--gpus", "512"),
                     f"x.yaml:{line}: plan.layout.learner_ep must divide num_local_experts (32), got 5")
        expect_error(run("plan", "--config", write(yaml.replace("  mfu: 0.35", "  mfu: 1.5")),
                         "--gpus", "512"), "plan.mfu must be in (0, 1], got 1.5")
        expect_error(run("plan", "--config", write(yaml.replace("    learner_tp: 8", "    learner_pp: 8")),
                         "--gpus", "512"), "plan.layout.learner_pp is not a known key")
        # Half the memory: still prints, warns; --strict turns it into a failure.
        small = write(yaml.replace("    memory_gb: 80", "    memory_gb: 40"))
        proc = run("plan", "--config", small, "--gpus", "512", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["fits"] is False
        assert "warning" in proc.stderr
        expect_error(run("plan", "--config", small, "--gpus", "512", "--strict"),
                     "does not fit in 40 GB per GPU")
    finally:
        shutil.rmtree(root)

    # `lightrl run` takes the same file: the plan section is not its error; the missing
    # dataset (not shipped) is.
    proc = run("run", "--config", CONFIG)
    expect_error(proc, "data.train")
    assert "plan" not in proc.stderr.split("data.train")[0], proc.stderr
    print("plan_cli: all ok")


if __name__ == "__main__":
    main()
