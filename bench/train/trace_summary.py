"""Summarises a Kineto trace (train_bench --profile): wall time of the traced span, GPU
busy time, and the GPU kernels grouped by name, most time first."""
import collections
import json
import sys

events = json.load(open(sys.argv[1]))["traceEvents"]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
cpu = [e for e in events if e.get("cat") == "cpu_op" and "dur" in e]
spans = [(e["ts"], e["ts"] + e["dur"]) for e in kernels]
busy, end = 0.0, -1.0
for a, b in sorted(spans):
    if b > end:
        busy += b - max(a, end)
        end = b
wall = max(e["ts"] + e["dur"] for e in cpu + kernels) - min(e["ts"] for e in cpu + kernels)
print(f"traced span {wall / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms, {len(kernels)} GPU ops")
by = collections.defaultdict(lambda: [0.0, 0])
for e in kernels:
    by[e["name"][:110]][0] += e["dur"]
    by[e["name"][:110]][1] += 1
for name, (dur, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{dur / 1e3:9.2f} ms {n:6d}x  {name}")
ops = collections.defaultdict(lambda: [0.0, 0])
for e in cpu:
    ops[e["name"]][0] += e["dur"]
    ops[e["name"]][1] += 1
print("CPU ops (inclusive time):")
for name, (dur, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{dur / 1e3:9.2f} ms {n:6d}x  {name}")
# GPU idle gaps longer than 20 us, by the innermost CPU op running when each gap ends (what
# the host was still doing while the device waited) and by the one at its start.
gaps = []
end = None
for a, b in sorted(spans):
    if end is not None and a - end > 20:
        gaps.append((end, a))
    end = b if end is None else max(end, b)
print(f"GPU idle gaps > 20 us: {len(gaps)}, {sum(b - a for a, b in gaps) / 1e3:.1f} ms")
cpu_sorted = sorted(cpu, key=lambda e: e["ts"])
def innermost(t):
    best = None
    for e in cpu_sorted:
        if e["ts"] > t:
            break
        if e["ts"] + e["dur"] >= t and (best is None or e["dur"] < best["dur"]):
            best = e
    return best["name"] if best else "(none)"
by_gap = collections.defaultdict(lambda: [0.0, 0])
for a, b in gaps:
    key = innermost(b - 1)
    by_gap[key][0] += b - a
    by_gap[key][1] += 1
for name, (dur, n) in sorted(by_gap.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{dur / 1e3:9.2f} ms {n:6d}x  {name}")
