"""Parity of lightrl's MiniMax model with transformers' MiniMaxForCausalLM.

Builds random tiny models with transformers, saves them, and checks that
`lightrl logprobs` gives the same per-token log-probabilities (FP32, max abs diff
<= 1e-4); then that checkpoints written by lightrl load in transformers with the same
outputs, and that MiniMax-M1's own config naming loads to the same model.

transformers' MiniMax rotates the whole head with RoPE; MiniMax-M1 rotates only the first
`rotary_dim` dims. For the partial-rotary case the transformers model is patched with that
rotation (the only place the test departs from stock transformers).

Run: LIGHTRL_BIN=build/rl/lightrl python3 tests/python/model_parity_test.py
"""
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import MiniMaxConfig, MiniMaxForCausalLM
from transformers.models.minimax import modeling_minimax

TOL = 1e-4
BIN = os.environ.get("LIGHTRL_BIN", "build/rl/lightrl")
SEED = int(os.environ.get("LIGHTRL_TEST_SEED", random.randrange(1 << 30)))
print(f"seed {SEED}", flush=True)
random.seed(SEED)
torch.manual_seed(SEED)
worst = {"diff": 0.0}


def lightrl(*args, check=True):
    proc = subprocess.run([BIN, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"lightrl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def make_config(**kw):
    base = dict(vocab_size=97, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                num_experts_per_tok=2, max_position_embeddings=512, block_size=5,
                layer_types=["linear_attention", "full_attention"])
    base.update(kw)
    return MiniMaxConfig(**base)


def random_model(config, partial_rotary=None):
    model = MiniMaxForCausalLM(config).eval()
    with torch.no_grad():
        # Larger-than-init weights so every layer moves the logits measurably.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    if partial_rotary:
        patch_partial_rotary(model, partial_rotary)
    return model


def patch_partial_rotary(model, rotary_dim):
    cfg = model.config
    theta = cfg.rope_parameters["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
    model.model.rotary_emb.inv_freq = inv
    model.model.rotary_emb.original_inv_freq = inv.clone()


_stock_rope = modeling_minimax.apply_rotary_pos_emb


def partial_rope(q, k, cos, sin, unsqueeze_dim=1, **kw):
    rd = cos.shape[-1]
    if rd == q.shape[-1]:
        return _stock_rope(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    qr, kr = _stock_rope(q[..., :rd], k[..., :rd], cos, sin, unsqueeze_dim=unsqueeze_dim)
    return torch.cat([qr, q[..., rd:]], -1), torch.cat([kr, k[..., rd:]], -1)


modeling_minimax.apply_rotary_pos_emb = partial_rope
for cls in (modeling_minimax.MiniMaxAttention,):
    if hasattr(cls, "apply_rotary_pos_emb"):
        cls.apply_rotary_pos_emb = staticmethod(partial_rope)


def hf_logprobs(model, tokens):
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return [None] + [logp[t - 1, tokens[t]].item() for t in range(1, len(tokens))]


def compare(model, model_dir, sequences, what):
    inp = os.path.join(model_dir, "in.jsonl")
    out = os.path.join(model_dir, "out.jsonl")
    with open(inp, "w") as f:
        for i, s in enumerate(sequences):
            f.write(json.dumps({"id": i, "tokens": s}) + "\n")
    lightrl("logprobs", "--model", model_dir, "--input", inp, "--output", out,
            "--batch-tokens", str(random.choice([16, 64, 100000])))
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == len(sequences), (what, len(rows))
    diff = 0.0
    for s, row in zip(sequences, rows):
        assert row["tokens"] == s and row["id"] == sequences.index(s) or row["tokens"] == s
        ref = hf_logprobs(model, s)
        got = row["logprobs"]
        assert got[0] is None and len(got) == len(s), (what, got[:3])
        for t in range(1, len(s)):
            assert math.isfinite(got[t]), (what, t, got[t])
            diff = max(diff, abs(got[t] - ref[t]))
    worst["diff"] = max(worst["diff"], diff)
    print(f"  {what}: {len(sequences)} sequences, max |diff| {diff:.2e}", flush=True)
    assert diff <= TOL, f"{what}: max abs logprob difference {diff} > {TOL}"


def random_sequences(vocab, lengths):
    return [[random.randrange(vocab) for _ in range(n)] for n in lengths]


CASES = [
    ("lightning+softmax, GQA 4/2, block 5",
     dict(), None),
    ("softmax first, 3 lightning, kv 1, alpha/beta factors, block 7",
     dict(num_hidden_layers=5, layer_types=["full_attention", "linear_attention", "linear_attention",
                                            "full_attention", "linear_attention"],
          num_key_value_heads=1, head_dim=16, block_size=7, full_attn_alpha_factor=1.7,
          full_attn_beta_factor=0.8, linear_attn_alpha_factor=1.3, linear_attn_beta_factor=0.6,
          mlp_alpha_factor=0.9, mlp_beta_factor=1.4, num_local_experts=3, num_experts_per_tok=1),
     None),
    ("M1 pattern (7 lightning + 1 softmax), rotary_dim 8 of 16, postnorm alpha (2*8)^(1/4)",
     dict(num_hidden_layers=8, layer_types=["linear_attention"] * 7 + ["full_attention"],
          head_dim=16, num_attention_heads=4, num_key_value_heads=2, block_size=16,
          rope_parameters={"rope_theta": 10000000.0, "rope_type": "default"},
          full_attn_alpha_factor=16 ** 0.25, linear_attn_alpha_factor=16 ** 0.25,
          mlp_alpha_factor=16 ** 0.25, num_local_experts=6, num_experts_per_tok=2),
     8),
]


def to_m1_naming(model_dir, rotary_dim):
    """Rewrites config.json the way MiniMax-M1's own checkpoints name their fields."""
    path = os.path.join(model_dir, "config.json")
    c = json.load(open(path))
    m1 = {k: c[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "num_key_value_heads", "head_dim",
                            "num_local_experts", "num_experts_per_tok", "rms_norm_eps",
                            "max_position_embeddings", "tie_word_embeddings", "hidden_act")}
    m1.update({
        "architectures": ["MiniMaxM1ForCausalLM"], "model_type": "minimax_m1",
        "attn_type_list": [1 if t == "full_attention" else 0 for t in c["layer_types"]],
        "layernorm_full_attention_alpha": c["full_attn_alpha_factor"],
        "layernorm_full_attention_beta": c["full_attn_beta_factor"],
        "layernorm_linear_attention_alpha": c["linear_attn_alpha_factor"],
        "layernorm_linear_attention_beta": c["linear_attn_beta_factor"],
        "layernorm_mlp_alpha": c["mlp_alpha_factor"], "layernorm_mlp_beta": c["mlp_beta_factor"],
        "rope_theta": c["rope_parameters"]["rope_theta"], "rotary_dim": rotary_dim,
        "postnorm": True, "shared_intermediate_size": 0, "torch_dtype": "float32",
    })
    json.dump(m1, open(path, "w"), indent=2)


def rewrite_rotary(model_dir, rotary_dim):
    path = os.path.join(model_dir, "config.json")
    c = json.load(open(path))
    c["rope_parameters"]["partial_rotary_factor"] = rotary_dim / c["head_dim"]
    json.dump(c, open(path, "w"), indent=2)


def main():
    root = tempfile.mkdtemp(prefix="lightrl_parity_")
    try:
        for n, (name, kw, rotary) in enumerate(CASES):
            print(name, flush=True)
            config = make_config(**kw)
            model = random_model(config, rotary)
            block = config.block_size
            lengths = [1, 2, block - 1, block, block + 1, 3 * block + 2, random.randint(2, 60),
                       random.randint(2, 60)]
            seqs = random_sequences(config.vocab_size, lengths)

            d = os.path.join(root, f"case{n}")
            model.save_pretrained(d)
            if rotary:
                rewrite_rotary(d, rotary)
            compare(model, d, seqs, "transformers checkpoint")

            sharded = os.path.join(root, f"case{n}_sharded")
            model.save_pretrained(sharded, max_shard_size="20KB")
            assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
            if rotary:
                rewrite_rotary(sharded, rotary)
            compare(model, sharded, seqs, "sharded transformers checkpoint")

            m1 = os.path.join(root, f"case{n}_m1")
            shutil.copytree(d, m1)
            to_m1_naming(m1, rotary or config.head_dim)
            compare(model, m1, seqs, "MiniMax-M1 config naming")

            # lightrl writes, transformers reads.
            out = os.path.join(root, f"case{n}_lightrl")
            lightrl("convert", "--model", m1, "--output", out)
            back = MiniMaxForCausalLM.from_pretrained(out).eval()
            if rotary:
                patch_partial_rotary(back, rotary)
            # The same weights; only the decay tables transformers reads from the file were
            # computed by lightrl, which rounds differently in the last bits.
            round_trip = 0.0
            for s in seqs:
                a, b = hf_logprobs(model, s), hf_logprobs(back, s)
                round_trip = max([round_trip] + [abs(x - y) for x, y in zip(a, b) if x is not None])
            print(f"  transformers original vs transformers reading lightrl's checkpoint: "
                  f"max |diff| {round_trip:.2e}", flush=True)
            assert round_trip <= 1e-5, f"round trip changed transformers' outputs by {round_trip}"
            compare(back, out, seqs, "lightrl-written checkpoint read by transformers")

            # bf16 storage: lightrl upcasts to FP32 exactly as transformers does.
            bf = os.path.join(root, f"case{n}_bf16")
            lightrl("convert", "--model", d, "--output", bf, "--dtype", "bfloat16")
            # The reference: the same model with bf16-rounded weights, computed in FP32
            # (its decay tables from the config, not from bf16-rounded stored copies).
            bmodel = random_model(config, rotary)
            rounded = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()
                       if not k.endswith(("_decay", "slope_rate"))}
            bmodel.load_state_dict(rounded, strict=False)
            bmodel.eval()
            compare(bmodel, bf, seqs, "bf16 checkpoint")
        print(f"largest |logprob diff| seen: {worst['diff']:.3e} (tolerance {TOL})")
        print("model parity OK")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
