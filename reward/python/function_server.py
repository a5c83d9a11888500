#!/usr/bin/env python3
"""lightrl's managed reward server: a Python function served as lightrl.v1.RewardService.

`lightrl run` starts it for each `reward.servers.NAME` entry that names a `python:` file
(docs/config.md), restarts it on its address when it dies, and stops it with the run.
It imports the user's file and calls, for every item of a Score batch,

    FUNCTION(prompt, response, metadata) -> float | dict

where metadata is a dict of strings: the row's fields the run forwards
(reward.metadata_fields) plus "ground_truth" (unless a forwarded field has that name).
A number is the score; a dict holds the score under "score" and any other entries are
score components (numbers or booleans), which the run logs with the server's score. Calls are made
one at a time, so the function need not be thread-safe. Stubs are compiled at start-up
from the repository's proto/lightrl/v1/reward.proto with grpc_tools.protoc into a
temporary directory.

  python reward/python/function_server.py --file my_reward.py --function score \
      --listen 127.0.0.1:0 --address-file /tmp/addr
"""
import argparse
import hmac
import importlib.util
import inspect
import math
import numbers
import os
import sys
import tempfile
import threading
import traceback
from concurrent import futures

import grpc
from grpc_tools import protoc

PROTO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "proto"))
MAX_BATCH = 4096
# Bounds on what the user's function may hand back.
MAX_COMPONENTS = 64
MAX_COMPONENT_NAME = 128


def fail(message):
    """Exits with a usage-style error that lightrl quotes from this server's log."""
    sys.exit(f"function_server.py: {message}")


def load_stubs(out_dir):
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}", os.path.join(PROTO_ROOT, "lightrl/v1/reward.proto"),
    ])
    if rc != 0:
        fail(f"protoc failed on {PROTO_ROOT}/lightrl/v1/reward.proto (rc {rc})")
    sys.path.insert(0, out_dir)
    from lightrl.v1 import reward_pb2, reward_pb2_grpc  # noqa: E402 (generated above)
    return reward_pb2, reward_pb2_grpc


def load_function(path, name):
    """Imports `path` and returns its callable `name`, checked to take three arguments."""
    if not os.path.isfile(path):
        fail(f"--file {path}: no such file")
    # The user's file may import modules that sit beside it.
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location("lightrl_user_reward", path)
    if spec is None or spec.loader is None:
        fail(f"--file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:
        traceback.print_exc()
        fail(f"--file {path}: importing it raised the error above")
    function = getattr(module, name, None)
    if function is None:
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        fail(f"--file {path} defines no function {name!r} (it defines: {', '.join(defined) or 'none'})")
    if not callable(function):
        fail(f"--file {path}: {name!r} is not callable")
    try:
        inspect.signature(function).bind(None, None, None)
    except TypeError as e:
        fail(f"--file {path}: {name}(prompt, response, metadata) must accept three arguments: {e}")
    except ValueError:
        pass  # a builtin without a signature: it will say so when called
    return function


def to_result(value, item_id, name):
    """(score, components) from what the function returned; ValueError naming the item."""
    where = f"{name}() for item {item_id!r}"
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(f"{where} returned a dict without a 'score' entry "
                             f"(keys: {', '.join(sorted(map(str, value)))[:500]})")
        if len(value) > MAX_COMPONENTS + 1:
            raise ValueError(f"{where} returned {len(value) - 1} components, more than {MAX_COMPONENTS}")
        score = value["score"]
        components = {}
        for key, v in value.items():
            if key == "score":
                continue
            if not isinstance(key, str) or not key or len(key) > MAX_COMPONENT_NAME:
                raise ValueError(f"{where}: component names are strings of 1 to "
                                 f"{MAX_COMPONENT_NAME} characters, got {key!r:.200}")
            components[key] = number(v, f"{where}: component {key!r}")
        return number(score, f"{where}: 'score'"), components
    return number(value, where), {}


def number(value, where):
    """A finite float from an int, float, bool or numpy scalar; ValueError otherwise."""
    if not isinstance(value, numbers.Real):
        raise ValueError(f"{where} is {type(value).__name__}, not a number")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{where} is {v}, not finite")
    return v


def make_servicer(pb2, pb2_grpc, function, name, token):
    lock = threading.Lock()

    class FunctionRewardService(pb2_grpc.RewardServiceServicer):
        def _check_auth(self, context):
            if not token:
                return
            presented = dict(context.invocation_metadata()).get("authorization", "")
            if presented.startswith("Bearer "):
                presented = presented[len("Bearer "):]
            if not hmac.compare_digest(presented.encode(), token.encode()):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong auth token")

        def Score(self, request, context):
            self._check_auth(context)
            n = len(request.items)
            if n == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Score: the batch has no items")
            if n > MAX_BATCH:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Score: the batch has {n} items, more than the limit of {MAX_BATCH}")
            if request.reward_kind not in ("", name):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f'Score: reward_kind "{request.reward_kind}" requested, '
                              f'this server scores "{name}"')
            seen = set()
            for item in request.items:
                if item.id in seen:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"Score: item id {item.id!r:.200} appears twice in the batch")
                seen.add(item.id)
            response = pb2.ScoreResponse()
            with lock:
                for item in request.items:
                    metadata = dict(item.metadata)
                    metadata.setdefault("ground_truth", item.ground_truth)
                    try:
                        value = function(item.prompt, item.response, metadata)
                    except Exception as e:  # the user's code: report, keep serving
                        traceback.print_exc()
                        context.abort(grpc.StatusCode.INTERNAL,
                                      f"{name}() failed on item {item.id!r:.200}: "
                                      f"{type(e).__name__}: {str(e)[:1000]}")
                    try:
                        score, components = to_result(value, item.id, name)
                    except ValueError as e:
                        context.abort(grpc.StatusCode.INTERNAL, str(e)[:1000])
                    result = response.results.add(id=item.id, score=score)
                    result.components.update(components)
            return response

        def Health(self, request, context):
            self._check_auth(context)
            return pb2.HealthResponse(serving=True, reward_kind=name)

    return FunctionRewardService()


def is_loopback(address):
    host = address.rsplit(":", 1)[0]
    return host in ("localhost", "[::1]") or host.startswith("127.")


def write_address(path, address):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(address + "\n")
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True, help="the Python file defining the function")
    parser.add_argument("--function", default="score", help="its name (default: score)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port; port 0 picks one")
    parser.add_argument("--address-file", default="",
                        help="written with host:port once listening")
    parser.add_argument("--max-request-mb", type=int, default=64,
                        help="MiB of one Score request at most (1 to 1024)")
    args = parser.parse_args()
    if not 1 <= args.max_request_mb <= 1024:
        fail(f"--max-request-mb must be in [1, 1024], got {args.max_request_mb}")
    token = os.environ.get("LIGHTRL_AUTH_TOKEN", "")
    if not token and not is_loopback(args.listen):
        fail(f'--listen "{args.listen}" is not loopback: set LIGHTRL_AUTH_TOKEN')
    function = load_function(args.file, args.function)

    with tempfile.TemporaryDirectory(prefix="lightrl_reward_stubs_") as stubs:
        pb2, pb2_grpc = load_stubs(stubs)
        limit = args.max_request_mb << 20
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit),
                                      ("grpc.so_reuseport", 0)])
        pb2_grpc.add_RewardServiceServicer_to_server(
            make_servicer(pb2, pb2_grpc, function, args.function, token), server)
        port = server.add_insecure_port(args.listen)
        if port == 0:
            fail(f'could not listen on "{args.listen}"')
        server.start()
        address = f"{args.listen.rsplit(':', 1)[0]}:{port}"
        if args.address_file:
            write_address(args.address_file, address)
        print(f"serving {args.file}:{args.function} on {address}", flush=True)
        try:
            server.wait_for_termination()
        except KeyboardInterrupt:
            server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
