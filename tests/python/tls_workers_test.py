"""`lightrl reward-worker` and `lightrl rollout-worker` with --tls-cert, --tls-key, --tls-ca
and --tls-client-auth on loopback, called with Python's grpc client. The certificates are
made here with the openssl command (an argument vector, no shell): a CA with a server and
a client certificate, and another CA with a client certificate of its own. A client that
does not trust the CA fails, one that does works, the shared token is still checked, and
under mutual TLS a client without a certificate, or with the other CA's, is refused.
LIGHTRL_BIN names the lightrl executable.
"""
import os
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


def make_leaf(d, ca, name):
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr",
            "-subj", f"/CN={name}")
    with open(f"{d}/{name}.ext", "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
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


def check_usage_errors(d):
    for command in ("reward-worker", "rollout-worker"):
        for flags, fragment in ((["--tls-cert", f"{d}/server.pem"], "without a key"),
                                (["--tls-cert", f"{d}/server.pem", "--tls-key",
                                  f"{d}/server.key", "--tls-client-auth"], "client_auth")):
            proc = subprocess.run([LIGHTRL, command, *flags], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 2 and fragment in proc.stderr, (command, flags, proc)


def main():
    procs = []
    try:
        with tempfile.TemporaryDirectory() as d:
            make_ca(d, "ca")
            make_leaf(d, "ca", "server")
            make_leaf(d, "ca", "client")
            make_ca(d, "other_ca")
            make_leaf(d, "other_ca", "other_client")
            pb2, pb2_grpc = load_stubs(d)
            check_reward_worker(pb2, pb2_grpc, d, procs)
            check_rollout_worker(d, procs)
            check_usage_errors(d)
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
