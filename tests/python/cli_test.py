"""The one CLI convention of `lightrl` (docs/cli.md), checked on the real binary for every
command: --help/-h prints the command's usage to stdout and exits 0; an unknown flag, a
missing or malformed flag value exits 2 naming the flag and `lightrl <cmd> --help`; a
runtime failure (missing config or input, bad file) exits 1.

Run: LIGHTRL_BIN=build/rl/lightrl python3 tests/python/cli_test.py
"""
import os
import subprocess
import sys
import tempfile

BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")

# (argv prefix, what its usage must name)
COMMANDS = [
    (["run"], "lightrl run"),
    (["replay"], "lightrl replay"),
    (["generate"], "lightrl generate"),
    (["logprobs"], "lightrl logprobs"),
    (["tokenize"], "lightrl tokenize"),
    (["init"], "lightrl init"),
    (["convert"], "lightrl convert"),
    (["rollouts"], "lightrl rollouts"),
    (["rollouts", "show"], "lightrl rollouts show"),
    (["rollouts", "export"], "lightrl rollouts export"),
    (["reward-worker"], "lightrl reward-worker"),
    (["rollout-worker"], "lightrl rollout-worker"),
    (["plan"], "lightrl plan"),
    (["plot"], "lightrl plot"),
]

failures = []


def run(*args, env=None):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)


def check(cond, what, proc):
    if cond:
        return
    failures.append(what)
    print(f"FAIL: {what}\n  rc={proc.returncode}\n  stdout={proc.stdout[-600:]!r}\n"
          f"  stderr={proc.stderr[-600:]!r}")


def expect(args, code, *stderr_needles, stdout_needles=()):
    p = run(*args)
    what = f"lightrl {' '.join(args)}"
    check(p.returncode == code, f"{what}: exit {p.returncode}, expected {code}", p)
    for n in stderr_needles:
        check(n in p.stderr, f"{what}: {n!r} not on stderr", p)
    for n in stdout_needles:
        check(n in p.stdout, f"{what}: {n!r} not on stdout", p)
    return p


def main():
    # The top level: its usage lists every command and the exit codes.
    top = expect(["--help"], 0, stdout_needles=["exit codes", "2  usage error", "1  runtime failure"])
    for argv, _ in COMMANDS:
        check(f"  {argv[0]} " in top.stdout, f"lightrl --help does not list {argv[0]}", top)
    expect(["-h"], 0, stdout_needles=["usage: lightrl <command>"])
    expect([], 2, "usage: lightrl <command>")
    expect(["no-such-command"], 2, "unknown command \"no-such-command\"")

    for argv, name in COMMANDS:
        for help_flag in ("--help", "-h"):
            p = expect(argv + [help_flag], 0, stdout_needles=[name, "--log-level"])
            check(p.stderr == "", f"{' '.join(argv)} {help_flag}: wrote to stderr", p)
        cmd = argv[0]
        # `lightrl rollouts` reads its first argument as the subcommand.
        expect(argv + ["--no-such-flag", "1"], 2,
               "--no-such-flag" if argv == ["rollouts"] else "unknown flag --no-such-flag",
               f"lightrl {cmd} --help")
        expect(argv + ["--log-level", "loud"], 2, "--log-level", "\"loud\"",
               f"lightrl {cmd} --help")

    # Missing or malformed flag values are usage errors too, naming the flag.
    expect(["init", "--config"], 2, "--config needs a value", "lightrl init --help")
    expect(["init", "--output", "x"], 2, "--config is required")
    expect(["convert", "--model", "a", "--output", "b", "--dtype", "fp8"], 2, "--dtype", "fp8")
    expect(["convert", "--model", "a", "--output", "b", "--to-layout", "pp=2"], 2,
           "--to-layout", "pp=2")
    expect(["convert", "--model", "a", "--output", "b", "--to-layout", "tp=2",
            "--dtype", "bf16"], 2, "--dtype cannot be combined with --to-layout")
    expect(["plan", "--config", "x.yaml", "--gpus", "many"], 2, "--gpus must be an integer")
    expect(["run"], 2, "--config is required", "lightrl run --help")
    expect(["run", "--config", "x.yaml", "--nproc", "0"], 2, "--nproc")
    expect(["replay", "--config", "x.yaml", "--rollouts", "d", "--steps", "5:2"], 2, "--steps")
    expect(["rollouts"], 2, "expected a subcommand")
    expect(["rollouts", "list"], 2, "unknown subcommand \"list\"")
    expect(["rollouts", "show", "--rollouts", "d", "--limit", "-1"], 2, "--limit")
    expect(["logprobs", "--model", "m", "--input", "i", "--output", "o", "--inputs", "x"], 2,
           "unknown flag --inputs")
    expect(["reward-worker", "--auth-token", "secret"], 2, "--auth-token")
    expect(["reward-worker", "--kind", "no-such-kind"], 2, "--kind", "lightrl reward-worker --help")
    expect(["reward-worker", "--options", "{not json"], 2, "--options")
    expect(["rollout-worker", "--max-message-mb", "4"], 2, "--max-message-mb")

    # Runtime failures: the flags are fine, the files are not.
    with tempfile.TemporaryDirectory(prefix="lightrl_cli_") as root:
        missing = os.path.join(root, "missing")
        expect(["run", "--config", missing + ".yaml"], 1, "lightrl run: ", "missing.yaml")
        expect(["replay", "--config", missing + ".yaml", "--rollouts", missing], 1, "missing.yaml")
        expect(["init", "--config", missing + ".json", "--output", os.path.join(root, "m")], 1,
               "lightrl init: ", "missing.json")
        expect(["rollouts", "show", "--rollouts", missing], 1, "lightrl rollouts: ", missing)
        expect(["tokenize", "--tokenizer", missing, "--input", missing, "--output",
                os.path.join(root, "o.jsonl")], 1, "lightrl tokenize: ", missing)
        expect(["plan", "--config", missing + ".yaml", "--gpus", "8"], 1, "missing.yaml")
        expect(["reward-worker", "--options-file", missing + ".json"], 1, "missing.json")
        expect(["plot", "--run", missing, "--output", os.path.join(root, "plots")], 1,
               "lightrl plot: ")
        # --log-level is taken by every command and does not change the outcome.
        expect(["plan", "--log-level=error", "--config", missing + ".yaml", "--gpus", "8"], 1,
               "missing.yaml")
        p = expect(["run", "--config", missing + ".yaml"], 1)
        check("--help" not in p.stderr, "a runtime failure points at --help", p)

    if failures:
        print(f"{len(failures)} CLI convention failures")
        sys.exit(1)
    print("cli convention OK")


if __name__ == "__main__":
    main()
