"""Times a transformers training step of the bench model, as bench/train/train_bench.cc
times the learner: the model saved by bench/engine/hf_bench.py, bf16 weights, AdamW with
MiniMax-M1's betas (0.9, 0.95) and eps 1e-15, next-token cross-entropy on random tokens,
forward + backward + optimizer step; warm-up steps, then the median of timed steps.
Prints one JSON line.
"""
import argparse
import json
import time

import torch
from transformers import MiniMaxForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model-dir", required=True)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--seq-len", type=int, default=2048)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--warmup", type=int, default=3)
args = ap.parse_args()

dev = "cuda"
model = MiniMaxForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).to(dev).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), eps=1e-15)
gen = torch.Generator().manual_seed(11)
ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=gen).to(dev)
times = []
for step in range(args.warmup + args.steps):
    torch.cuda.synchronize()
    t0 = time.time()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    if step >= args.warmup:
        times.append(time.time() - t0)
times.sort()
med = times[len(times) // 2]
tokens = args.batch * args.seq_len
print(json.dumps({"bench": "train", "engine": "transformers", "batch": args.batch,
                  "seq_len": args.seq_len, "step_ms_min": 1e3 * times[0],
                  "step_ms_median": 1e3 * med, "step_ms_max": 1e3 * times[-1],
                  "tok_s": round(tokens / med), "loss": loss.item(),
                  "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}), flush=True)
