"""Per-kernel GPU time of the engine's decode step (or of a prefill: --ttft-runs N against
1, --what prefill), from two Nsight Compute runs of engine_bench that differ only in the
number of steps (the prefill, the warm-up and the set-up kernels cancel in the difference):

  ncu --clock-control none --metrics gpu__time_duration.sum --csv \
      engine_bench ... --new-tokens 9 > long.csv
  ncu ... --new-tokens 1 > short.csv
  python3 bench/engine/kernel_breakdown.py long.csv short.csv --steps 8 [--step-ms 1.6]

Prints, per kernel name, the time per decode step (us) and the launches per step, sorted
by time, the total, and with --step-ms (the measured step time) the share of the step the
kernels fill (the rest is launch gaps and host work).
"""
import argparse
import collections
import csv
import io
import sys


def kernel_times(path):
    """{kernel name: (total ns, launches)} from ncu's --csv output (details page)."""
    text = open(path, encoding="utf-8", errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        sys.exit(f"{path}: no ncu CSV table (no \"ID\" header)")
    rows = csv.DictReader(io.StringIO(text[start:]))
    times = collections.defaultdict(lambda: [0.0, 0])
    for row in rows:
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1, "ns": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}
        entry = times[row["Kernel Name"]]
        entry[0] += value * scale.get(unit, 1)
        entry[1] += 1
    return times


def short_name(name, width=96):
    name = name.replace("(anonymous namespace)::", "")
    return name if len(name) <= width else name[: width - 3] + "..."


ap = argparse.ArgumentParser()
ap.add_argument("long_csv")
ap.add_argument("short_csv")
ap.add_argument("--steps", type=int, required=True, help="steps (decode steps, prefills) the long run has more")
ap.add_argument("--what", default="decode step", help="what one step is, for the printout")
ap.add_argument("--step-ms", type=float, help="the measured decode step time")
args = ap.parse_args()
long_t, short_t = kernel_times(args.long_csv), kernel_times(args.short_csv)
rows = []
for name, (ns, n) in long_t.items():
    s_ns, s_n = short_t.get(name, (0.0, 0))
    per_step_us = (ns - s_ns) / args.steps / 1e3
    launches = (n - s_n) / args.steps
    if launches > 0 or per_step_us > 0.05:
        rows.append((per_step_us, launches, name))
rows.sort(reverse=True)
total = sum(r[0] for r in rows)
print(f"{'us/step':>9} {'share':>6} {'launches':>8}  kernel")
for us, launches, name in rows:
    print(f"{us:9.1f} {100 * us / total:5.1f}% {launches:8.1f}  {short_name(name)}")
print(f"{total:9.1f}  100.0% {sum(r[1] for r in rows):8.1f}  total kernel time per {args.what}")
if args.step_ms:
    print(f"measured step {1e3 * args.step_ms:.1f} us: kernels fill {100 * total / (1e3 * args.step_ms):.1f}%")
