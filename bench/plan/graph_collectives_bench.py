"""Small NCCL all-reduce / all-to-all between two GPUs, eager from torch.distributed vs
captured in a CUDA graph (as a CUDA-graph decode step would run them): the per-collective
latency `lightrl plan` charges a decode step (rl/plan.cc, plan.nvlink_latency_us).

Run: python3 -m torch.distributed.run --nproc_per_node 2 bench/plan/graph_collectives_bench.py
Writes $OUT/graph_collectives.json (or ./graph_collectives.json) and prints it.
"""
import json
import os

import torch
import torch.distributed as d


def timed_us(f, n):
    """Microseconds per collective: f issues n of them."""
    s = torch.cuda.Event(enable_timing=True)
    e = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    d.barrier()
    s.record()
    f()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) * 1e3 / n


def main():
    r = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(r)
    d.init_process_group("nccl", device_id=torch.device("cuda", r))
    R = {}
    n = 100
    for B in [8192, 65536, 786432]:
        x = torch.ones(B // 2, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        for name, op in [("allreduce", lambda: d.all_reduce(x)),
                         ("alltoall", lambda: d.all_to_all_single(y, x))]:
            for _ in range(10):
                op()
            eager = sorted(timed_us(lambda: [op() for _ in range(n)], n) for _ in range(3))[1]
            torch.cuda.synchronize()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    op()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(n):
                    op()
            for _ in range(3):
                g.replay()
            graph = sorted(timed_us(g.replay, n) for _ in range(5))[2]
            R[f"{name}_{B}B_eager_us"] = round(eager, 1)
            R[f"{name}_{B}B_graph_us"] = round(graph, 1)
    if r == 0:
        print(json.dumps(R, indent=1))
        with open(os.path.join(os.environ.get("OUT", "."), "graph_collectives.json"), "w") as f:
            f.write(json.dumps(R, indent=1))
    d.destroy_process_group()


if __name__ == "__main__":
    main()
