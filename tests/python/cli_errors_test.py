"""Bad input to `lightrl logprobs` and `lightrl convert`: each case must exit non-zero with
a message naming the file, the field or tensor, and the offending value, and must not
leave an output file behind.

Run: LIGHTRL_BIN=build/rl/lightrl python3 tests/python/cli_errors_test.py
"""
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile

BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")

CONFIG = {
    "vocab_size": 50, "hidden_size": 16, "intermediate_size": 12, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "num_local_experts": 2,
    "num_experts_per_tok": 1, "block_size": 4,
    "layer_types": ["linear_attention", "full_attention"],
}


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True)


def expect_error(proc, *needles, output=None):
    assert proc.returncode != 0, f"expected failure, got success: {proc.stdout}"
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in error message:\n{proc.stderr}"
    assert "Segmentation" not in proc.stderr and proc.returncode > 0
    if output:
        assert not os.path.exists(output), "a failed run left an output file"
    print("  ok:", proc.stderr.strip().splitlines()[-1][:150])


def main():
    root = tempfile.mkdtemp(prefix="lightrl_cli_")
    try:
        cfg_path = os.path.join(root, "config.json")
        json.dump(CONFIG, open(cfg_path, "w"))
        model = os.path.join(root, "model")
        p = run("init", "--config", cfg_path, "--output", model, "--seed", str(random.randrange(1000)))
        assert p.returncode == 0, p.stderr
        good = os.path.join(root, "good.jsonl")
        out = os.path.join(root, "out.jsonl")
        with open(good, "w") as f:
            f.write(json.dumps({"tokens": [1, 2, 3]}) + "\n")
        p = run("logprobs", "--model", model, "--input", good, "--output", out)
        assert p.returncode == 0, p.stderr
        os.remove(out)

        print("malformed JSONL line")
        bad = os.path.join(root, "bad.jsonl")
        with open(bad, "w") as f:
            f.write(json.dumps({"tokens": [1, 2]}) + "\n" + '{"tokens": [1, 2\n')
        expect_error(run("logprobs", "--model", model, "--input", bad, "--output", out),
                     f"{bad}:2", output=out)

        print("token id out of the vocabulary")
        with open(bad, "w") as f:
            f.write(json.dumps({"tokens": [1, 2]}) + "\n" + json.dumps({"tokens": [4, 50, 3]}) + "\n")
        expect_error(run("logprobs", "--model", model, "--input", bad, "--output", out),
                     f"{bad}:2", "tokens[1] = 50", "[0, 50)", output=out)

        print("a line with neither tokens nor text")
        with open(bad, "w") as f:
            f.write(json.dumps({"prompt": "x"}) + "\n")
        expect_error(run("logprobs", "--model", model, "--input", bad, "--output", out),
                     f"{bad}:1", "\"tokens\" or \"text\"", output=out)

        def broken_model(name, edit_config=None, edit_file=None):
            d = os.path.join(root, name)
            shutil.copytree(model, d)
            if edit_config:
                c = json.load(open(os.path.join(d, "config.json")))
                edit_config(c)
                json.dump(c, open(os.path.join(d, "config.json"), "w"))
            if edit_file:
                edit_file(os.path.join(d, "model.safetensors"))
            return d

        print("missing config field")
        d = broken_model("missing_field", edit_config=lambda c: c.pop("hidden_size"))
        expect_error(run("logprobs", "--model", d, "--input", good, "--output", out),
                     os.path.join(d, "config.json"), "hidden_size is required", output=out)

        print("unknown config field")
        d = broken_model("unknown_field", edit_config=lambda c: c.update(num_expertz=3))
        expect_error(run("logprobs", "--model", d, "--input", good, "--output", out),
                     "config.json", "num_expertz is not a known", output=out)

        print("out-of-range config value")
        d = broken_model("bad_value", edit_config=lambda c: c.update(num_experts_per_tok=5))
        expect_error(run("logprobs", "--model", d, "--input", good, "--output", out),
                     "num_experts_per_tok (5) exceeds num_local_experts (2)", output=out)

        print("truncated safetensors")
        def truncate(path):
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size - random.randint(1, 200))
        d = broken_model("truncated", edit_file=truncate)
        expect_error(run("logprobs", "--model", d, "--input", good, "--output", out),
                     "model.safetensors", "truncated", output=out)

        print("config that does not match the tensors (mis-shaped tensor)")
        d = broken_model("misshaped", edit_config=lambda c: c.update(intermediate_size=13))
        expect_error(run("logprobs", "--model", d, "--input", good, "--output", out),
                     "model.safetensors", "block_sparse_moe.experts.0.w1.weight", "[12, 16]",
                     output=out)

        print("garbage header")
        def garbage(path):
            with open(path, "r+b") as f:
                f.seek(8)
                f.write(b"{not json")
        d = broken_model("garbage", edit_file=garbage)
        expect_error(run("logprobs", "--model", d, "--input", good, "--output", out),
                     "model.safetensors", "bad header", output=out)

        print("missing model directory")
        expect_error(run("logprobs", "--model", os.path.join(root, "nope"), "--input", good,
                         "--output", out), "nope", output=out)

        print("unknown flag")
        expect_error(run("logprobs", "--model", model, "--inputs", good), "unknown flag --inputs")
        print("cli errors OK")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
