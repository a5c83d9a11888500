#!/usr/bin/env python3
"""A custom lightrl reward server in Python: implements lightrl.v1.RewardService.

The rule is keyword-based with a length shaping term: a response scores 1.0 when it
contains the ground truth as a whole word (case-insensitive), minus 0.001 per character
over --max-chars (floored at -1). Stubs are generated at startup from the repository's
proto/lightrl/v1/reward.proto with grpc_tools.protoc into a temporary directory, so
nothing generated is checked in.

  .venv/bin/python examples/reward_server_python/server.py --listen 127.0.0.1:50061
"""
import argparse
import hmac
import math
import os
import re
import sys
import tempfile
from concurrent import futures

import grpc
from grpc_tools import protoc

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_ROOT = os.path.join(REPO, "proto")
MAX_BATCH = 4096
KIND = "keyword"


def load_stubs(out_dir):
    """Compiles reward.proto into out_dir and imports the generated modules."""
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}", os.path.join(PROTO_ROOT, "lightrl/v1/reward.proto"),
    ])
    if rc != 0:
        sys.exit(f"server.py: protoc failed on {PROTO_ROOT}/lightrl/v1/reward.proto (rc {rc})")
    sys.path.insert(0, out_dir)
    from lightrl.v1 import reward_pb2, reward_pb2_grpc  # noqa: E402 (generated above)
    return reward_pb2, reward_pb2_grpc


def keyword_score(response, ground_truth, max_chars):
    """Returns (score, components); always finite."""
    pattern = r"(?<!\w)" + re.escape(ground_truth.strip()) + r"(?!\w)"
    hit = bool(ground_truth) and re.search(pattern, response, re.IGNORECASE) is not None
    over = max(0, len(response) - max_chars)
    penalty = -min(1.0, 0.001 * over)
    return (1.0 if hit else 0.0) + penalty, {"keyword": 1.0 if hit else 0.0, "length": penalty}


def make_servicer(pb2, pb2_grpc, token, max_chars):
    class KeywordRewardService(pb2_grpc.RewardServiceServicer):
        def _check_auth(self, context):
            if not token:
                return True
            presented = dict(context.invocation_metadata()).get("authorization", "")
            if presented.startswith("Bearer "):
                presented = presented[len("Bearer "):]
            if not hmac.compare_digest(presented.encode(), token.encode()):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong auth token")
            return True

        def Score(self, request, context):
            self._check_auth(context)
            n = len(request.items)
            if n == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Score: the batch has no items")
            if n > MAX_BATCH:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Score: the batch has {n} items, more than the limit of {MAX_BATCH}")
            if request.reward_kind not in ("", KIND):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f'Score: reward_kind "{request.reward_kind}" requested, '
                              f'this server scores "{KIND}"')
            seen = set()
            for i, item in enumerate(request.items):
                if item.id in seen:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f'Score: item {i} repeats id "{item.id}"')
                seen.add(item.id)
            response = pb2.ScoreResponse()
            for item in request.items:
                score, components = keyword_score(item.response, item.ground_truth, max_chars)
                if not math.isfinite(score):
                    context.abort(grpc.StatusCode.INTERNAL, f"non-finite score for id {item.id}")
                result = response.results.add(id=item.id, score=score)
                result.components.update(components)
            return response

        def Health(self, request, context):
            self._check_auth(context)
            return pb2.HealthResponse(serving=True, reward_kind=KIND)

    return KeywordRewardService()


def is_loopback(address):
    host = address.rsplit(":", 1)[0]
    return host in ("localhost", "[::1]") or host.startswith("127.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port; port 0 picks one")
    parser.add_argument("--auth-token", default="", help="shared token; required off loopback")
    parser.add_argument("--max-chars", type=int, default=2000, help="length before the penalty")
    parser.add_argument("--tls-cert", default="", help="PEM certificate chain: serve TLS")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", default="",
                        help="PEM CA of client certificates: require them (mutual TLS)")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_ca and not args.tls_cert):
        sys.exit("server.py: --tls-cert and --tls-key go together; --tls-ca needs them")
    if not args.auth_token and not is_loopback(args.listen):
        sys.exit(f'server.py: "{args.listen}" is not loopback: --auth-token is required')

    with tempfile.TemporaryDirectory(prefix="lightrl_reward_stubs_") as stubs:
        pb2, pb2_grpc = load_stubs(stubs)
        # Batches of long responses exceed gRPC's 4 MiB default; accept up to 1 GiB.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                             options=[("grpc.max_receive_message_length", 1 << 30)])
        pb2_grpc.add_RewardServiceServicer_to_server(
            make_servicer(pb2, pb2_grpc, args.auth_token, args.max_chars), server)
        if args.tls_cert:
            def read(path):
                with open(path, "rb") as f:
                    return f.read()
            credentials = grpc.ssl_server_credentials(
                [(read(args.tls_key), read(args.tls_cert))],
                root_certificates=read(args.tls_ca) if args.tls_ca else None,
                require_client_auth=bool(args.tls_ca))
            port = server.add_secure_port(args.listen, credentials)
        else:
            port = server.add_insecure_port(args.listen)
        if port == 0:
            sys.exit(f'server.py: could not listen on "{args.listen}"')
        server.start()
        host = args.listen.rsplit(":", 1)[0]
        print(f"listening on {host}:{port}", flush=True)
        try:
            server.wait_for_termination()
        except KeyboardInterrupt:
            server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
