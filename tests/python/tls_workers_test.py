"""`lightrl reward-worker` and `lightrl rollout-worker` with --tls-cert, --tls-key, --tls-ca
and --tls-client-auth on loopback (and the Python example reward server with its own TLS
flags), called with Python's grpc client. The certificates are
made here with the openssl command (an argument vector, no shell): a CA with a server and
a client certificate, and another CA with a client certificate of its own. A client that
does not trust the CA fails, one that does works, the shared token is still checked, and
under mutual TLS a client without a certificate, or with the other CA's, is refused.
When the machine has a non-loopback IPv4 address, `lightrl run` also scores through a
TLS reward worker listening there, with the run config's `tls:` section (mutual TLS and
the token), and fails at its start-up health check with a CA that does not sign it.
LIGHTRL_BIN names the lightrl executable.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reward_servers_test import LIGHTRL, expect_error, load_stubs, start  # noqa: E402


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.pem",
            "-subj", f"/CN={name}")


def make_leaf(d, ca, name, ips=("127.0.0.1",)):
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr",
            "-subj", f"/CN={name}")
    with open(f"{d}/{name}.ext", "w") as f:
        names = ",".join([f"IP:{ip}" for ip in ips] + ["DNS:localhost"])
        f.write(f"basicConstraints=CA:FALSE\nsubjectAltName={names}\n"
                "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/{ca}.pem", "-CAkey",
            f"{d}/{ca}.key", "-CAcreateserial", "-days", "2", "-out", f"{d}/{name}.pem",
            "-extfile", f"{d}/{name}.ext")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def tls_channel(address, d, ca="ca", client=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(f"{d}/{ca}.pem"),
        private_key=read(f"{d}/{client}.key") if client else None,
        certificate_chain=read(f"{d}/{client}.pem") if client else None)
    return grpc.secure_channel(address, creds)


def score(pb2, pb2_grpc, channel, token=None):
    stub = pb2_grpc.RewardServiceStub(channel)
    item = pb2.ScoreItem(id="a", response="The answer is 5", ground_truth="5")
    metadata = [("authorization", f"Bearer {token}")] if token else None
    return stub.Score(pb2.ScoreRequest(items=[item]), timeout=10, metadata=metadata)


def check_reward_worker(pb2, pb2_grpc, d, procs):
    address = start([LIGHTRL, "reward-worker", "--listen", "127.0.0.1:0", "--kind", "math",
                     "--tls-cert", f"{d}/server.pem", "--tls-key", f"{d}/server.key"],
                    procs, env=dict(os.environ, LIGHTRL_AUTH_TOKEN="tok"))
    with grpc.insecure_channel(address) as plain:
        expect_error(lambda: score(pb2, pb2_grpc, plain, "tok"), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(address, d, ca="other_ca") as untrusted:
        expect_error(lambda: score(pb2, pb2_grpc, untrusted, "tok"), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(address, d) as trusted:
        assert score(pb2, pb2_grpc, trusted, "tok").results[0].score == 1.0
        expect_error(lambda: score(pb2, pb2_grpc, trusted, "nope"),
                     grpc.StatusCode.UNAUTHENTICATED)

    mutual = start([LIGHTRL, "reward-worker", "--listen", "127.0.0.1:0", "--kind", "math",
                    "--tls-cert", f"{d}/server.pem", "--tls-key", f"{d}/server.key",
                    "--tls-ca", f"{d}/ca.pem", "--tls-client-auth"], procs)
    with tls_channel(mutual, d) as no_cert:
        expect_error(lambda: score(pb2, pb2_grpc, no_cert), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(mutual, d, client="other_client") as wrong_cert:
        expect_error(lambda: score(pb2, pb2_grpc, wrong_cert), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(mutual, d, client="client") as right_cert:
        assert score(pb2, pb2_grpc, right_cert).results[0].score == 1.0


def rollout_health(channel):
    # RolloutHealthRequest is empty: its serialized form is no bytes.
    call = channel.unary_unary("/lightrl.v1.RolloutService/Health",
                               request_serializer=None, response_deserializer=None)
    return call(b"", timeout=10)


def check_rollout_worker(d, procs):
    address = start([LIGHTRL, "rollout-worker", "--listen", "127.0.0.1:0",
                     "--tls-cert", f"{d}/server.pem", "--tls-key", f"{d}/server.key",
                     "--tls-ca", f"{d}/ca.pem", "--tls-client-auth"], procs)
    with grpc.insecure_channel(address) as plain:
        expect_error(lambda: rollout_health(plain), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(address, d, client="other_client") as wrong_cert:
        expect_error(lambda: rollout_health(wrong_cert), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(address, d, client="client") as right_cert:
        rollout_health(right_cert)


def check_python_example(pb2, pb2_grpc, d, procs):
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "examples", "reward_server_python", "server.py")
    address = start([sys.executable, example, "--listen", "127.0.0.1:0", "--tls-cert",
                     f"{d}/server.pem", "--tls-key", f"{d}/server.key", "--tls-ca",
                     f"{d}/ca.pem"], procs)
    with grpc.insecure_channel(address) as plain:
        expect_error(lambda: score(pb2, pb2_grpc, plain), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(address, d, client="other_client") as wrong_cert:
        expect_error(lambda: score(pb2, pb2_grpc, wrong_cert), grpc.StatusCode.UNAVAILABLE)
    with tls_channel(address, d, client="client") as right_cert:
        assert len(score(pb2, pb2_grpc, right_cert).results) == 1


def check_usage_errors(d):
    for command in ("reward-worker", "rollout-worker"):
        for flags, fragment in ((["--tls-cert", f"{d}/server.pem"], "without a key"),
                                (["--tls-cert", f"{d}/server.pem", "--tls-key",
                                  f"{d}/server.key", "--tls-client-auth"], "client_auth")):
            proc = subprocess.run([LIGHTRL, command, *flags], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 2 and fragment in proc.stderr, (command, flags, proc)


def outward_ipv4():
    """This machine's address toward other hosts, or None; connecting a UDP socket sends
    nothing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def run_config(d, tmp, address, ca):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    train = os.path.join(tmp, "train.jsonl")
    with open(train, "w") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n")
    token = os.path.join(tmp, "token")
    with open(token, "w") as f:
        f.write("tok\n")
    os.chmod(token, 0o600)
    config = {
        "run": {"output_dir": os.path.join(tmp, f"run-{ca}"), "steps": 1, "seed": 1},
        "model": {"init_config": os.path.join(root, "configs/models/toy-arithmetic.json"),
                  "tokenizer": os.path.join(root, "examples/toy/tokenizer.json")},
        "data": {"train": train},
        "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 4,
                    "early_stop_window": 0},
        "reward": {"servers": {"judge": {"address": address, "auth_token_file": token}}},
        "algorithm": {"dynamic_sampling": False},
        "logging": {"tensorboard": False, "progress": False},
        "tls": {"ca": f"{d}/{ca}.pem", "cert": f"{d}/client.pem", "key": f"{d}/client.key",
                "client_auth": True},
    }
    path = os.path.join(tmp, f"run-{ca}.yaml")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def check_run_over_tls(d, ip, procs):
    address = start([LIGHTRL, "reward-worker", "--listen", f"{ip}:0", "--kind", "math",
                     "--tls-cert", f"{d}/server.pem", "--tls-key", f"{d}/server.key",
                     "--tls-ca", f"{d}/ca.pem", "--tls-client-auth"],
                    procs, env=dict(os.environ, LIGHTRL_AUTH_TOKEN="tok"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run([LIGHTRL, "run", "--config", run_config(d, tmp, address, "ca")],
                             capture_output=True, text=True, timeout=180, env=env)
        assert run.returncode == 0, (run.returncode, run.stdout[-2000:], run.stderr[-3000:])
        # The server's own score is logged per step: every call reached it over TLS.
        with open(os.path.join(tmp, "run-ca", "metrics.jsonl")) as f:
            steps = [json.loads(line) for line in f]
        assert any("reward/judge" in json.dumps(step) for step in steps), steps
        wrong = subprocess.run([LIGHTRL, "run", "--config",
                                run_config(d, tmp, address, "other_ca"), "--health-timeout",
                                "3"], capture_output=True, text=True, timeout=180, env=env)
        assert wrong.returncode != 0 and address in wrong.stderr, wrong.stderr[-3000:]


def main():
    procs = []
    try:
        with tempfile.TemporaryDirectory() as d:
            make_ca(d, "ca")
            ip = outward_ipv4()
            make_leaf(d, "ca", "server", ("127.0.0.1", ip) if ip else ("127.0.0.1",))
            make_leaf(d, "ca", "client")
            make_ca(d, "other_ca")
            make_leaf(d, "other_ca", "other_client")
            pb2, pb2_grpc = load_stubs(d)
            check_reward_worker(pb2, pb2_grpc, d, procs)
            check_rollout_worker(d, procs)
            check_python_example(pb2, pb2_grpc, d, procs)
            check_usage_errors(d)
            if ip:
                check_run_over_tls(d, ip, procs)
            else:
                print("tls_workers_test: no non-loopback IPv4 address, lightrl run over TLS "
                      "skipped")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("tls_workers_test: OK")


if __name__ == "__main__":
    main()
