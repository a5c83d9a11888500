"""Checks the hand-encoded TensorBoard event files and the JSONL metrics against readers
that know nothing of lightrl: TensorBoard's EventAccumulator and Python's json module.

METRICS_TOOL names tests/common/metrics_writer_tool, which writes scalars and prints what
it wrote as JSON.
"""
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time

from tensorboard.backend.event_processing import event_accumulator


def as_float32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def run_tool(args):
    tool = os.environ["METRICS_TOOL"]
    proc = subprocess.run([tool] + args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{tool} {args} failed: {proc.stderr}")
    return json.loads(proc.stdout)  # json accepts the NaN/Infinity the tool prints.


def check_event_file(written):
    acc = event_accumulator.EventAccumulator(
        written["tensorboard_file"], size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    assert acc.file_version == 2.0, acc.file_version  # parsed from "brain.Event:2"
    expected = {}
    for event in written["events"]:
        for tag, value in event["scalars"]:
            expected.setdefault(tag, []).append((event["step"], value))
    got_tags = sorted(acc.Tags()[event_accumulator.SCALARS])
    assert got_tags == sorted(expected), (got_tags, sorted(expected))
    checked = 0
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], (tag, got, points)
        for (step, value), (_, want) in zip(got, points):
            if math.isnan(want):
                assert math.isnan(value), (tag, step, value)
            elif math.isinf(want):
                assert value == want, (tag, step, value, want)
            else:
                # simple_value is float32: the only loss allowed is the float32 rounding.
                assert value == as_float32(want), (tag, step, value, want)
                assert math.isclose(value, want, rel_tol=1e-7 * 8), (tag, step, value, want)
            checked += 1
        for e in acc.Scalars(tag):
            assert abs(e.wall_time - time.time()) < 600, e.wall_time
    return checked


def reject_constant(name):
    raise ValueError(f"non-strict JSON constant {name} in the JSONL file")


def main():
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    with tempfile.TemporaryDirectory() as tmp:
        logdir = os.path.join(tmp, "tb")
        jsonl = os.path.join(tmp, "sub", "metrics.jsonl")
        first = run_tool(["--logdir", logdir, "--jsonl", jsonl, "--seed", str(seed),
                          "--steps", "25", "--tags", "5",
                          "--value", "40:special/nan=nan", "--value", "40:special/inf=inf",
                          "--value", "41:special/neg_inf=-inf",
                          "--value", "41:special/tiny=1e-30"])
        # A resumed run: a new event file, the same JSONL file appended to.
        second = run_tool(["--logdir", logdir, "--jsonl", jsonl, "--seed", str(seed + 1),
                           "--steps", "10", "--first-step", "50", "--tags", "3"])
        assert first["tensorboard_file"] != second["tensorboard_file"]
        for written in (first, second):
            name = os.path.basename(written["tensorboard_file"])
            assert name.startswith("events.out.tfevents.") and name.endswith(".lightrl"), name
        checked = check_event_file(first) + check_event_file(second)
        assert checked == 25 * 5 + 4 + 10 * 3, checked

        # The whole directory through TensorBoard's multi-file loader, as a user sees it.
        acc = event_accumulator.EventAccumulator(
            logdir, size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        assert len(acc.Scalars("rollout/metric_0")) == 35

        with open(jsonl) as f:
            lines = [json.loads(line, parse_constant=reject_constant) for line in f]
        events = first["events"] + second["events"]
        assert len(lines) == len(events), (len(lines), len(events))
        for line, event in zip(lines, events):
            assert line["step"] == event["step"], (line, event)
            assert abs(line["time"] - time.time()) < 600, line
            assert len(line) == 2 + len(event["scalars"]), (line, event)
            for tag, want in event["scalars"]:
                if math.isfinite(want):
                    assert line[tag] == want, (tag, line[tag], want)  # doubles round-trip
                else:
                    assert line[tag] is None, (tag, line[tag])
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
