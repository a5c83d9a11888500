"""`lightrl rollouts show/export` on a rollout log written here in Python, with its own
CRC-32C, so the on-disk format is checked against an implementation that shares no code
with rl/rollout_log.cc. LIGHTRL_BIN names the lightrl executable.
"""
import json
import os
import random
import struct
import subprocess
import sys
import tempfile

MAGIC = 0x4C52FFD9


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(group):
    payload = json.dumps(group, separators=(",", ":"), ensure_ascii=False).encode()
    return struct.pack("<III", MAGIC, len(payload), masked(crc32c(payload))) + payload


def random_group(rng, step):
    samples = []
    for k in range(rng.randint(1, 4)):
        n = rng.randint(0, 30)
        samples.append({
            "tokens": [rng.randrange(200064) for _ in range(n)],
            "logprobs": [-rng.random() * 10 for _ in range(n)],
            "reward": rng.choice([0.0, 1.0, 0.5]),
            "reward_components": {"correct": rng.choice([0.0, 1.0])},
            "advantage": rng.uniform(-2, 2),
            "finish_reason": rng.choice(["stop", "length"]),
            "text": "answer é \"quoted\"\nline " * rng.randint(0, 20),
        })
    return {"step": step, "policy_version": step - 1, "group_id": f"grp-{step}-{rng.random()}",
            "prompt_text": "What is 2+2?", "prompt_tokens": [1, 2, 3],
            "ground_truth": "4", "samples": samples}


def as_float32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def logprobs_as_float32(groups):
    """Logprobs are float32 in the log: the export writes the shortest text that reads back
    as the same float32, so compare after rounding what was written to float32."""
    for g in groups:
        for s in g["samples"]:
            s["logprobs"] = [as_float32(v) for v in s["logprobs"]]
    return groups


def run(args):
    proc = subprocess.run([os.environ["LIGHTRL_BIN"], "rollouts"] + args,
                          capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def main():
    rng = random.Random(random.randrange(1 << 30))
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "rollouts")
        os.makedirs(log)
        groups = [random_group(rng, step) for step in range(12)]
        with open(os.path.join(log, "rollouts-000001.log"), "wb") as f:
            for g in groups[:7]:
                f.write(record(g))
        second_record_offset = len(record(groups[0]))
        with open(os.path.join(log, "rollouts-000002.log"), "wb") as f:
            for g in groups[7:]:
                f.write(record(g))
            torn = record(random_group(rng, 99))
            f.write(torn[:len(torn) // 2])  # a crash mid-append

        out = os.path.join(tmp, "out.jsonl")
        code, _, err = run(["export", "--rollouts", log, "--output", out])
        assert code == 0, err
        assert "torn record" in err and "rollouts-000002.log" in err, err
        with open(out) as f:
            exported = logprobs_as_float32([json.loads(line) for line in f])
        groups = logprobs_as_float32(groups)
        assert exported == groups, "export differs from what was written"

        code, stdout, err = run(["show", "--rollouts", log, "--step", "3"])
        assert code == 0, err
        assert groups[3]["group_id"] in stdout, stdout
        assert groups[4]["group_id"] not in stdout, stdout
        assert "1 of 1 matching groups shown" in stdout, stdout
        code, stdout, err = run(["show", "--rollouts", log, "--limit", "2"])
        assert code == 0 and "2 of 12 matching groups shown" in stdout, (stdout, err)

        # A flipped byte inside the first segment is corruption, named by file and offset.
        first = os.path.join(log, "rollouts-000001.log")
        data = bytearray(open(first, "rb").read())
        offset = second_record_offset
        data[offset + 20] ^= 0x01
        open(first, "wb").write(bytes(data))
        code, _, err = run(["export", "--rollouts", log, "--output", out + ".2"])
        assert code != 0 and f"rollouts-000001.log: corrupt record at byte offset {offset}" in err, err
        assert not os.path.exists(out + ".2"), "a failed export left its output behind"
        code, _, err = run(["export", "--rollouts", log, "--output", out + ".3", "--skip-corrupt"])
        assert code == 0, err
        with open(out + ".3") as f:
            skipped = logprobs_as_float32([json.loads(line) for line in f])
        assert skipped == groups[:1] + groups[2:]
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
