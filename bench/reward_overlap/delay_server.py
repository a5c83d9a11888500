#!/usr/bin/env python3
"""A lightrl.v1.RewardService that takes a fixed time per item: the slow reward of the
scoring-overlap benchmark (a stand-in for code runs or a reward model).

Each Score call scores its items one after another, sleeping --delay-ms per item, and
gives 1.0 when the response contains the ground truth, else 0.0. Calls run concurrently
(up to --max-calls at once); on SIGTERM or SIGINT the server writes to --stats-file how
many calls it served and the most it served at once.

  .venv/bin/python bench/reward_overlap/delay_server.py --delay-ms 50 --stats-file s.json
"""
import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "examples", "reward_server_python"))
from server import load_stubs  # noqa: E402 (the example server's proto compilation)

MAX_BATCH = 4096


class Load:
    """Calls being served, the most at once, and the totals."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls = 0
        self.items = 0

    def enter(self, items):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls += 1
            self.items += items

    def leave(self):
        with self.lock:
            self.active -= 1

    def as_json(self):
        with self.lock:
            return {"calls": self.calls, "items": self.items, "max_concurrent_calls": self.max_active}


def make_servicer(pb2, pb2_grpc, delay_s, load):
    class DelayRewardService(pb2_grpc.RewardServiceServicer):
        def Score(self, request, context):
            n = len(request.items)
            if n == 0 or n > MAX_BATCH:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Score: the batch has {n} items, expected 1 to {MAX_BATCH}")
            load.enter(n)
            try:
                response = pb2.ScoreResponse()
                for item in request.items:
                    time.sleep(delay_s)
                    hit = bool(item.ground_truth) and item.ground_truth.strip() in item.response
                    result = response.results.add()
                    result.id = item.id
                    result.score = 1.0 if hit else 0.0
                return response
            finally:
                load.leave()

        def Health(self, request, context):
            return pb2.HealthResponse(serving=True, reward_kind="delay")

    return DelayRewardService()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="loopback host:port; 0 picks one")
    parser.add_argument("--delay-ms", type=float, required=True, help="time per item")
    parser.add_argument("--max-calls", type=int, default=64, help="calls served at once")
    parser.add_argument("--stats-file", default="", help="where to write the call counts at exit")
    args = parser.parse_args()
    host = args.listen.rsplit(":", 1)[0]
    if host not in ("localhost", "[::1]") and not host.startswith("127."):
        sys.exit(f'delay_server.py: "{args.listen}" is not loopback; this server has no auth')
    if args.delay_ms < 0 or args.max_calls < 1:
        sys.exit("delay_server.py: --delay-ms must be >= 0 and --max-calls >= 1")
    load = Load()
    with tempfile.TemporaryDirectory(prefix="lightrl_delay_stubs_") as stubs:
        pb2, pb2_grpc = load_stubs(stubs)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.max_calls),
                             maximum_concurrent_rpcs=args.max_calls)
        pb2_grpc.add_RewardServiceServicer_to_server(
            make_servicer(pb2, pb2_grpc, args.delay_ms / 1000.0, load), server)
        port = server.add_insecure_port(args.listen)
        if port == 0:
            sys.exit(f'delay_server.py: could not listen on "{args.listen}"')
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        server.start()
        print(f"listening on {host}:{port}", flush=True)
        stop.wait()
        server.stop(grace=1).wait()
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(load.as_json(), f)


if __name__ == "__main__":
    main()
