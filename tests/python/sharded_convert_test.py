"""`lightrl convert` between the HF format and sharded checkpoints (docs/cli.md, "Converting
checkpoints"), on the real binary and real files: an HF checkpoint split into a layout's
shard files and reassembled is byte-identical to the original, a reshard from one layout to
another likewise; `lightrl logprobs` gives the same numbers from a sharded folder as from
the HF one; broken folders fail with exit 1 naming the file.

Run: LIGHTRL_BIN=build/rl/lightrl python3 tests/python/sharded_convert_test.py
"""
import json
import os
import random
import shutil
import subprocess
import tempfile

BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")

# tests/test_models.h TinyParallelConfig: every size splits over tp, ep, expert_tp up to 2x4x2.
CONFIG = {
    "vocab_size": 48, "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4, "rotary_dim": 4,
    "num_local_experts": 4, "num_experts_per_tok": 2, "block_size": 4,
    "layer_types": ["linear_attention", "full_attention", "linear_attention"],
}
LAYOUTS = ["tp=2,ep=2,expert_tp=1", "ep=4,expert_tp=2", "tp=2,ep=2,expert_tp=2", "tp=1"]


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def ok(*args):
    p = run(*args)
    assert p.returncode == 0, f"lightrl {' '.join(args)}: exit {p.returncode}\n{p.stderr}"
    return p


def read(path):
    with open(path, "rb") as f:
        return f.read()


def expect_same_files(a, b, names):
    for name in names:
        assert read(os.path.join(a, name)) == read(os.path.join(b, name)), \
            f"{name} differs between {a} and {b}"


def expect_error(proc, code, *needles):
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}: {proc.stderr}"
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in the error:\n{proc.stderr}"
    print("  ok:", proc.stderr.strip().splitlines()[0][:160])


def main():
    root = tempfile.mkdtemp(prefix="lightrl_shards_")
    try:
        cfg = os.path.join(root, "config.json")
        json.dump(CONFIG, open(cfg, "w"))
        hf = os.path.join(root, "hf")
        ok("init", "--config", cfg, "--output", hf, "--dtype", "bfloat16",
           "--seed", str(random.randrange(1 << 30)))
        gen = {"eos_token_id": [1, 2], "max_new_tokens": 7}
        json.dump(gen, open(os.path.join(hf, "generation_config.json"), "w"))
        weights = ["model.safetensors", "config.json", "generation_config.json"]

        tokens = os.path.join(root, "tokens.jsonl")
        with open(tokens, "w") as f:
            for n in (12, 5, 30):
                f.write(json.dumps({"tokens": [random.randrange(48) for _ in range(n)]}) + "\n")
        want = os.path.join(root, "want.jsonl")
        ok("logprobs", "--model", hf, "--input", tokens, "--output", want)

        previous = None
        for i, layout in enumerate(LAYOUTS):
            print("layout", layout)
            sharded = os.path.join(root, f"sharded{i}")
            ok("convert", "--model", hf, "--output", sharded, "--to-layout", layout)
            index = json.load(open(os.path.join(sharded, "model.sharded.index.json")))
            sizes = {"tp": 1, "ep": 1, "expert_tp": 1}
            sizes.update({k: int(v) for k, v in (kv.split("=") for kv in layout.split(","))})
            assert index["layout"] == sizes, index["layout"]
            assert len(index["files"]) == sizes["tp"] * sizes["ep"] * sizes["expert_tp"]
            for name in index["files"]:
                assert os.path.exists(os.path.join(sharded, name)), name
            assert os.path.exists(os.path.join(sharded, "manifest.json"))
            assert not os.path.exists(os.path.join(sharded, "model.safetensors"))
            expect_same_files(hf, sharded, ["config.json", "generation_config.json"])

            back = os.path.join(root, f"back{i}")
            ok("convert", "--model", sharded, "--output", back)
            expect_same_files(hf, back, weights)

            got = os.path.join(root, f"got{i}.jsonl")
            ok("logprobs", "--model", sharded, "--input", tokens, "--output", got)
            assert read(got) == read(want), f"logprobs from {layout} differ from the HF folder's"

            if previous is not None:
                # Layout to layout, then back to HF: still the same bytes.
                reshard = os.path.join(root, f"reshard{i}")
                ok("convert", "--model", previous, "--output", reshard, "--to-layout", layout)
                back2 = os.path.join(root, f"back2_{i}")
                ok("convert", "--model", reshard, "--output", back2)
                expect_same_files(hf, back2, weights)
            previous = sharded

        # --dtype on a sharded folder goes through the model: float32 out of bfloat16 in.
        f32 = os.path.join(root, "f32")
        ok("convert", "--model", previous, "--output", f32, "--dtype", "float32")
        data = read(os.path.join(f32, "model.safetensors"))
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
        assert dtypes == {"F32"}, dtypes

        print("bad inputs")
        expect_error(run("convert", "--model", hf, "--output", os.path.join(root, "x"),
                         "--to-layout", "tp=3"), 1, "tp (3) must divide num_attention_heads")
        broken = os.path.join(root, "broken")
        shutil.copytree(os.path.join(root, "sharded0"), broken)
        victim = os.path.join(broken, "model-tp1of2-ep0of2-etp0of1.safetensors")
        os.remove(os.path.join(broken, "manifest.json"))
        data = read(victim)
        with open(victim, "wb") as f:
            f.write(data[:-5])
        expect_error(run("convert", "--model", broken, "--output", os.path.join(root, "y")), 1,
                     victim, "truncated")
        expect_error(run("logprobs", "--model", broken, "--input", tokens, "--output",
                         os.path.join(root, "z.jsonl")), 1, victim)
        os.remove(victim)
        expect_error(run("convert", "--model", broken, "--output", os.path.join(root, "y")), 1,
                     "model-tp1of2-ep0of2-etp0of1.safetensors", "no such file")
        # With its manifest, a changed file is caught before any tensor is read.
        checked = os.path.join(root, "sharded1")
        shard = os.path.join(checked, json.load(open(os.path.join(
            checked, "model.sharded.index.json")))["files"][-1])
        data = bytearray(read(shard))
        data[-1] ^= 0xFF
        with open(shard, "wb") as f:
            f.write(bytes(data))
        expect_error(run("convert", "--model", checked, "--output", os.path.join(root, "w")), 1,
                     os.path.basename(shard))
        print("sharded_convert_test: OK")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
