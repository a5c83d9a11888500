"""Creates the bench model and times transformers' greedy generate on it.

Builds MiniMaxForCausalLM from a config (random weights, seed 0), saves it in bf16 with
save_pretrained (lightrl loads the same files), writes one prompts file per batch size
(random token prompts, the same for both engines), and times transformers' generate of
NEW tokens at each batch size the way /work/shared/device/peer_bench.py does (a short
warm-up generate, then one timed run). Prints one JSON line per measurement.
"""
import argparse
import json
import os
import time

import torch
from transformers import MiniMaxConfig, MiniMaxForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--model-dir", required=True)
ap.add_argument("--prompts-dir", required=True)
ap.add_argument("--batches", default="8,64,256")
ap.add_argument("--prompt-len", type=int, default=128)
ap.add_argument("--new-tokens", type=int, default=128)
ap.add_argument("--skip-hf", action="store_true")
args = ap.parse_args()

torch.manual_seed(0)
cfg = MiniMaxConfig(**json.load(open(args.config)))
model = MiniMaxForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(args.model_dir)
print(json.dumps({"params_m": sum(p.numel() for p in model.parameters()) / 1e6}), flush=True)

os.makedirs(args.prompts_dir, exist_ok=True)
batches = [int(b) for b in args.batches.split(",")]
gen = torch.Generator().manual_seed(1)
prompts = {}
for bs in batches:
    ids = torch.randint(0, cfg.vocab_size, (bs, args.prompt_len), generator=gen)
    prompts[bs] = ids
    with open(os.path.join(args.prompts_dir, f"prompts_{bs}.jsonl"), "w") as f:
        for row in ids.tolist():
            f.write(json.dumps({"prompt_tokens": row}) + "\n")

if not args.skip_hf:
    dev = "cuda"
    model = model.to(dev).eval()
    with torch.no_grad():
        for bs in batches:
            ids = prompts[bs].to(dev)
            mask = torch.ones_like(ids)
            model.generate(ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8,
                           do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            t0 = time.time()
            model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                           min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            torch.cuda.synchronize()
            dt = time.time() - t0
            print(json.dumps({"engine": "transformers", "batch": bs,
                              "tok_s": bs * args.new_tokens / dt,
                              "ms_per_step": dt * 1e3 / args.new_tokens,
                              "peak_gib": torch.cuda.max_memory_allocated() / 2**30}), flush=True)
