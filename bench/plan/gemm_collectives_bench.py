"""GEMMs at MiniMax-M1's shapes on GPU 0, and NCCL all-reduce / all-to-all between two GPUs
called eagerly from torch.distributed. Figures feed `lightrl plan` (rl/plan.cc).

Run: python3 -m torch.distributed.run --nproc_per_node 2 bench/plan/gemm_collectives_bench.py
Writes $OUT/collectives.json (or ./collectives.json) and prints it.
"""
import json
import os

import torch
import torch.distributed as d


def timed_us(f, n, sync=True):
    """Mean microseconds per call of f over n back-to-back calls, after 5 warm-up calls."""
    for _ in range(5):
        f()
    s = torch.cuda.Event(enable_timing=True)
    e = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    if sync:
        d.barrier()
    s.record()
    for _ in range(n):
        f()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / n * 1e3


def main():
    d.init_process_group("nccl")
    r = d.get_rank()
    torch.cuda.set_device(r)
    R = {}
    if r == 0:
        R["device"] = torch.cuda.get_device_name(0)
        # m x k @ k x n: expert w1/w3 (6144 -> 9216, or 2304 under expert-TP 4) and w2,
        # attention qkv under TP 8 (6144 -> 3072), softmax k/v (1024 -> 6144), a square one.
        for m, k, n in [(8192, 6144, 9216), (16384, 6144, 2304), (8192, 6144, 2304),
                        (8192, 2304, 6144), (2048, 6144, 2304), (16384, 6144, 3072),
                        (16384, 1024, 6144), (8192, 8192, 8192)]:
            a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
            ts = sorted(timed_us(lambda: a @ b, 20, False) for _ in range(5))
            R[f"mm_{m}x{k}x{n}_tflops"] = round(2 * m * k * n / ts[2] / 1e6, 1)
    d.barrier()
    for B in [8192, 65536, 786432, 16 << 20, 256 << 20]:
        x = torch.ones(B // 2, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        n = 200 if B < 1 << 24 else 10
        ar = sorted(timed_us(lambda: d.all_reduce(x), n) for _ in range(3))[1]
        a2 = sorted(timed_us(lambda: d.all_to_all_single(y, x), n) for _ in range(3))[1]
        R[f"allreduce_{B}B_us"] = round(ar, 1)
        R[f"alltoall_{B}B_us"] = round(a2, 1)
        R[f"allreduce_{B}B_busbw_GBs"] = round(B / ar / 1e3, 1)
        R[f"alltoall_{B}B_algbw_GBs"] = round(B / 2 / a2 / 1e3, 1)
    if r == 0:
        print(json.dumps(R, indent=1))
        with open(os.path.join(os.environ.get("OUT", "."), "collectives.json"), "w") as f:
            f.write(json.dumps(R, indent=1))
    d.destroy_process_group()


if __name__ == "__main__":
    main()
