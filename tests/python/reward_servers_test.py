"""Real reward servers on loopback, called with Python's grpc client: `lightrl
reward-worker --kind math` (built-in rule), examples/reward_server_python/server.py
(keyword rule) and, when built, examples/reward_server_cpp (answer-line rule). All are
started on port 0 as subprocesses, read for their "listening on" line, checked for
scores, auth and batch validation, and killed at the end.
LIGHTRL_BIN names the lightrl executable.
"""
import os
import random
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LIGHTRL = os.environ.get("LIGHTRL_BIN", os.path.join(REPO, "build", "rl", "lightrl"))
EXAMPLE_CPP = os.environ.get("EXAMPLE_REWARD_SERVER_BIN", os.path.join(
    REPO, "build", "examples", "reward_server_cpp", "example_reward_server"))
DEADLINE_S = 50  # the whole test must end well inside 60 s


def load_stubs(out_dir):
    proto_root = os.path.join(REPO, "proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto_root}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}",
                      os.path.join(proto_root, "lightrl/v1/reward.proto")])
    assert rc == 0, f"protoc failed: {rc}"
    sys.path.insert(0, out_dir)
    from lightrl.v1 import reward_pb2, reward_pb2_grpc
    return reward_pb2, reward_pb2_grpc


def start(cmd, procs, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    procs.append(proc)
    line = proc.stdout.readline()  # the server prints it once listening
    if not line.startswith("listening on "):
        proc.kill()
        raise AssertionError(f"{cmd}: expected 'listening on', got {line!r}; "
                             f"stderr: {proc.stderr.read()}")
    return line.split()[-1]


def expect_error(fn, code, fragment=""):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        assert fragment in e.details(), f"{fragment!r} not in {e.details()!r}"
        return
    raise AssertionError(f"expected {code}, call succeeded")


def check_math_worker(pb2, stub, rng):
    health = stub.Health(pb2.HealthRequest(), timeout=5)
    assert health.serving and health.reward_kind == "math", health
    items, expected = [], []
    for i in range(200):
        a, b = rng.randint(-999, 999), rng.randint(-999, 999)
        truth = a + b
        right = rng.random() < 0.5
        answer = truth if right else truth + rng.choice([-3, -1, 1, 7])
        items.append(pb2.ScoreItem(id=f"m{i}", prompt=f"{a} + {b} = ",
                                   response=f"Let me add. The answer is {answer}",
                                   ground_truth=str(truth)))
        expected.append(1.0 if right else 0.0)
    response = stub.Score(pb2.ScoreRequest(items=items), timeout=10)
    assert len(response.results) == len(items)
    by_id = {r.id: r.score for r in response.results}
    for item, want in zip(items, expected):
        assert by_id[item.id] == want, (item.response, item.ground_truth, by_id[item.id])
    assert 20 < sum(expected) < 180
    expect_error(lambda: stub.Score(pb2.ScoreRequest(), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "no items")
    # Still serving after the rejected call.
    again = stub.Score(pb2.ScoreRequest(items=items[:1]), timeout=5)
    assert again.results[0].score == expected[0]


def keyword_expected(response, ground_truth, max_chars=2000):
    words = [w.strip(".,!?").lower() for w in response.split()]
    hit = 1.0 if ground_truth.lower() in words else 0.0
    return hit - min(1.0, 0.001 * max(0, len(response) - max_chars))


def check_python_server(pb2, stub, rng):
    health = stub.Health(pb2.HealthRequest(), timeout=5)
    assert health.serving and health.reward_kind == "keyword", health
    vocab = ["paris", "london", "rome", "berlin", "madrid"]
    items = []
    for i in range(100):
        truth = rng.choice(vocab)
        said = rng.choice(vocab)
        filler = "x" * rng.choice([0, 0, 2500])
        items.append(pb2.ScoreItem(id=f"k{i}", ground_truth=truth,
                                   response=f"I think it is {said.title()}. {filler}"))
    response = stub.Score(pb2.ScoreRequest(items=items), timeout=10)
    by_id = {r.id: r for r in response.results}
    for item in items:
        want = keyword_expected(item.response, item.ground_truth)
        got = by_id[item.id]
        assert abs(got.score - want) < 1e-12, (item.response[:40], item.ground_truth,
                                               got.score, want)
        assert set(got.components) == {"keyword", "length"}
    expect_error(lambda: stub.Score(pb2.ScoreRequest(), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, "no items")
    # Ids are unique within a request (docs/proto.md): a repeat fails the whole batch.
    repeated = [items[0], items[1], pb2.ScoreItem(id=items[0].id, response="x")]
    expect_error(lambda: stub.Score(pb2.ScoreRequest(items=repeated), timeout=5),
                 grpc.StatusCode.INVALID_ARGUMENT, f'item 2 repeats id "{items[0].id}"')
    # Still serving after the rejected call.
    assert len(stub.Score(pb2.ScoreRequest(items=items[:2]), timeout=5).results) == 2


def check_cpp_example(pb2, stub):
    health = stub.Health(pb2.HealthRequest(), timeout=5)
    assert health.serving and health.reward_kind == "answer-line", health
    cases = [("work\nAnswer: 12", "12", 1.0), ("the result is 12", "12", 0.2),
             ("Answer: 13", "12", 0.0), ("w " * 600 + "\nAnswer: 12", "12", 0.5)]
    items = [pb2.ScoreItem(id=str(i), response=r, ground_truth=t)
             for i, (r, t, _) in enumerate(cases)]
    response = stub.Score(pb2.ScoreRequest(items=items), timeout=10)
    by_id = {r.id: r.score for r in response.results}
    for i, (_, _, want) in enumerate(cases):
        assert by_id[str(i)] == want, (cases[i][0][-20:], by_id[str(i)], want)


def check_auth(pb2, pb2_grpc, procs):
    # The token comes from the environment, never argv (/proc/<pid>/cmdline is world-readable).
    address = start([LIGHTRL, "reward-worker", "--listen", "127.0.0.1:0", "--kind", "math"],
                    procs, env=dict(os.environ, LIGHTRL_AUTH_TOKEN="tok"))
    with open(f"/proc/{procs[-1].pid}/cmdline", "rb") as f:
        assert b"tok" not in f.read().split(b"\0")[1:], "the token is on the command line"
    with grpc.insecure_channel(address) as channel:
        stub = pb2_grpc.RewardServiceStub(channel)
        item = pb2.ScoreItem(id="a", response="The answer is 5", ground_truth="5")
        request = pb2.ScoreRequest(items=[item])
        expect_error(lambda: stub.Score(request, timeout=5), grpc.StatusCode.UNAUTHENTICATED)
        expect_error(lambda: stub.Score(request, timeout=5,
                                        metadata=[("authorization", "Bearer nope")]),
                     grpc.StatusCode.UNAUTHENTICATED)
        ok = stub.Score(request, timeout=5, metadata=[("authorization", "Bearer tok")])
        assert ok.results[0].score == 1.0
    # Off loopback without a token the worker refuses to start.
    refused = subprocess.run([LIGHTRL, "reward-worker", "--listen", "0.0.0.0:0"],
                             capture_output=True, text=True, timeout=20)
    assert refused.returncode != 0 and "auth token" in refused.stderr, refused
    # A token flag is refused with the reason; a blank token is an error, not "no token".
    flag = subprocess.run([LIGHTRL, "reward-worker", "--auth-token", "tok"],
                          capture_output=True, text=True, timeout=20)
    assert flag.returncode != 0 and "/proc" in flag.stderr, flag
    blank = subprocess.run([LIGHTRL, "reward-worker"], capture_output=True, text=True,
                           timeout=20, env=dict(os.environ, LIGHTRL_AUTH_TOKEN=" \n"))
    assert blank.returncode != 0 and "empty or only whitespace" in blank.stderr, blank


def check_run_with_servers(servers):
    """`lightrl run` scoring with the built-in arithmetic reward plus the custom servers,
    weighted; every logged sample carries each server's part."""
    import json
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as tmp:
        train = os.path.join(tmp, "train.jsonl")
        with open(train, "w") as f:
            for i in range(8):
                f.write(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n")
        out = os.path.join(tmp, "run")
        config = {
            "run": {"output_dir": out, "steps": 2, "seed": 1},
            "model": {"init_config": os.path.join(root, "configs/models/toy-arithmetic.json"),
                      "tokenizer": os.path.join(root, "examples/toy/tokenizer.json")},
            "data": {"train": train},
            "rollout": {"group_size": 2, "prompts_per_step": 4, "max_new_tokens": 4,
                        "early_stop_window": 0},
            "reward": {"weights": {"arithmetic": 1.0},
                       "servers": {name: {"address": address, "weight": 0.5}
                                   for name, address in servers.items()}},
            "algorithm": {"dynamic_sampling": False},
            "logging": {"tensorboard": False, "progress": False},
        }
        path = os.path.join(tmp, "run.yaml")
        with open(path, "w") as f:
            json.dump(config, f)
        run = subprocess.run([LIGHTRL, "run", "--config", path], capture_output=True, text=True,
                             timeout=180, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert run.returncode == 0, run.stderr[-3000:]
        export = os.path.join(tmp, "groups.jsonl")
        proc = subprocess.run([LIGHTRL, "rollouts", "export", "--rollouts",
                               os.path.join(out, "rollouts"), "--output", export],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        with open(export) as f:
            groups = [json.loads(line) for line in f]
        assert len(groups) == 8, len(groups)
        for g in groups:
            for sample in g["samples"]:
                parts = sample["reward_components"]
                total = parts["arithmetic"] + sum(parts[name] for name in servers)
                assert abs(total - sample["reward"]) < 1e-9, (parts, sample["reward"])
                for name in servers:
                    assert any(k.startswith(name + "/") for k in parts), (name, parts)


def main():
    start_time = time.monotonic()
    rng = random.Random(7)
    procs = []
    try:
        with tempfile.TemporaryDirectory() as stubs:
            pb2, pb2_grpc = load_stubs(stubs)
            worker = start([LIGHTRL, "reward-worker", "--listen", "127.0.0.1:0", "--kind", "math"],
                           procs)
            python_server = start([sys.executable,
                                   os.path.join(REPO, "examples/reward_server_python/server.py"),
                                   "--listen", "127.0.0.1:0"], procs)
            with grpc.insecure_channel(worker) as channel:
                check_math_worker(pb2, pb2_grpc.RewardServiceStub(channel), rng)
            with grpc.insecure_channel(python_server) as channel:
                check_python_server(pb2, pb2_grpc.RewardServiceStub(channel), rng)
            check_auth(pb2, pb2_grpc, procs)
            if os.path.exists(EXAMPLE_CPP):
                cpp_server = start([EXAMPLE_CPP, "--listen", "127.0.0.1:0"], procs)
                with grpc.insecure_channel(cpp_server) as channel:
                    check_cpp_example(pb2, pb2_grpc.RewardServiceStub(channel))
            else:
                print(f"reward_servers_test: {EXAMPLE_CPP} not built, C++ example skipped")
            servers = {"keyword": python_server}
            if os.path.exists(EXAMPLE_CPP):
                servers["answer_format"] = cpp_server
            check_run_with_servers(servers)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # The worker exits cleanly on SIGTERM.
    assert procs[0].returncode == 0, procs[0].returncode
    elapsed = time.monotonic() - start_time
    assert elapsed < DEADLINE_S, f"took {elapsed:.1f} s"
    print(f"reward_servers_test: ok ({elapsed:.1f} s)")


if __name__ == "__main__":
    main()
