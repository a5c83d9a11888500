"""Running one worker binary per rank of a Gloo group on loopback, for the multi-process
tests (tensor_parallel_test.py, vocab_parallel_test.py, engine_tp_test.py; distributed_test.py
its waiting and ports): each rank is
`WORKER RANK ARGS...`, prints one JSON line per check, and exits 0 when its checks pass."""
import json
import os
import socket
import subprocess


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs, timeout, what):
    """Waits for every process in rank order; returns [(returncode, stdout, stderr)]. Kills
    them all and fails naming `what` and the rank when one outlives `timeout` seconds."""
    results = []
    for r, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{what}: rank {r} timed out")
        results.append((p.returncode, out, err))
    return results


def run_ranks(worker, world, args, lines_per_rank, what, timeout=240):
    """Starts ranks 0..world-1 as `worker RANK *args(rank)`, one intra-op thread each;
    waits for all, and returns every rank's JSON lines. Fails naming `what` when a rank
    times out, exits non-zero or prints other than `lines_per_rank` lines."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([worker, str(r), *[str(a) for a in args(r)]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(world)]
    rows, failed = [], []
    for r, (rc, out, err) in enumerate(wait_all(procs, timeout, what)):
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        if rc != 0 or len(lines) != lines_per_rank:
            failed.append(f"rank {r} exit {rc}:\n{out}{err}")
        rows.extend(lines)
    assert not failed, f"{what}:\n" + "\n".join(failed)
    return rows
