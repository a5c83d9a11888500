"""The peers of lightning_bench: flash-linear-attention's chunk_simple_gla and vLLM's MiniMax
lightning kernels at the same shapes.

  python3 bench/lightning/run_peer.py --fla .peer [--vllm .peer/vllm] [--quick]

64 heads x 128, bf16, g_gamma = -slope (MiniMax layer 10 of 80), scale = 1.0: forward at
B x T = 4 x 8K, 1 x 32K, 1 x 128K and forward + backward, plus torch's device-to-device
copy bandwidth, printed in lightning_bench's table format. fla is checked first against an
FP64 token recurrence. Times are medians of CUDA-event-timed runs after warm-up on random
data. The fla/ folder is read from --fla and never vendored.

--vllm names a vLLM source folder (or its vllm/model_executor/layers/lightning_attn.py): that
file is loaded on its own, with the three vLLM names it imports (the platform check, its
triton import, PAD_SLOT_ID) provided here, and its kernels run as vLLM's MiniMax model calls
them: FP32 q/k/v (vLLM applies the activation in FP32), prefill one sequence at a time with
its state (`lightning_attention`), decode over a slot-indexed FP32 state cache
(`linear_decode_forward_triton`). It is checked against the FP64 recurrence first.
"""
import argparse
import sys

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--fla", required=True, help="folder that contains the fla/ package")
ap.add_argument("--vllm", help="vLLM source folder, or its lightning_attn.py")
ap.add_argument("--quick", action="store_true")
args = ap.parse_args()
sys.path.insert(0, args.fla)
from fla.ops.simple_gla import chunk_simple_gla  # noqa: E402


def load_vllm_lightning(path):
    """vLLM's lightning_attn.py as a module, without importing the rest of vLLM."""
    import importlib.util
    import os
    import types

    import triton
    import triton.language as tl

    if os.path.isdir(path):
        path = os.path.join(path, "vllm", "model_executor", "layers", "lightning_attn.py")
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cuda=lambda: True)
    triton_utils = types.ModuleType("vllm.triton_utils")
    triton_utils.tl, triton_utils.triton = tl, triton
    backend_utils = types.ModuleType("vllm.v1.attention.backends.utils")
    backend_utils.PAD_SLOT_ID = -1
    provided = {"vllm.platforms": platforms, "vllm.triton_utils": triton_utils,
                "vllm.v1.attention.backends.utils": backend_utils}
    try:
        import einops  # noqa: F401
    except ImportError:  # the one einops call the file makes: "b h n d -> b n (h d)"
        einops = types.ModuleType("einops")
        einops.rearrange = lambda x, pattern: x.permute(0, 2, 1, 3).flatten(2)
        provided["einops"] = einops
    saved = {name: sys.modules.get(name) for name in provided}
    sys.modules.update(provided)
    try:
        spec = importlib.util.spec_from_file_location("vllm_lightning_attn", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


vllm_la = load_vllm_lightning(args.vllm) if args.vllm else None

dev = "cuda"
H, D = 64, 128
ITERS = 5 if args.quick else 20
torch.manual_seed(0)


def median_ms(fn, iters=ITERS, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    a, b, ts = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), []
    for _ in range(iters):
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return sorted(ts)[len(ts) // 2]


def minimax_slopes(num_heads, layer, num_layers):
    base = 1 / (2 ** (8 / num_heads))
    exps = torch.arange(num_heads, dtype=torch.float64) + 1
    return ((base ** exps) * (1 - layer / (num_layers - 1 + 1e-5) + 1e-5)).float()


def recurrence_fp64(q, k, v, s):  # [B, T, H, D]
    B, T, _, _ = q.shape
    S = torch.zeros(B, H, D, D, device=q.device, dtype=torch.float64)
    lam = torch.exp(-s.double()).view(1, H, 1, 1)
    out = torch.empty(B, T, H, D, device=q.device, dtype=torch.float64)
    for t in range(T):
        S = lam * S + k[:, t].double().unsqueeze(-1) * v[:, t].double().unsqueeze(-2)
        out[:, t] = torch.einsum("bhd,bhde->bhe", q[:, t].double(), S)
    return out


print(torch.cuda.get_device_name(), "torch", torch.__version__)
s = minimax_slopes(H, 10, 80).to(dev)
q, k, v = [(torch.rand(1, 512, H, D, device=dev) - 0.5).bfloat16() for _ in range(3)]
ref = recurrence_fp64(q, k, v, s)
o, _ = chunk_simple_gla(q, k, v, g_gamma=-s, scale=1.0)
print(f"fla vs FP64 recurrence (T=512): rel err {((o.double() - ref).norm() / ref.norm()).item():.2e}")


def vllm_prefill(q, k, v, s):
    """[B, T, H, D] FP32 -> per-sequence calls as vLLM's MiniMax prefill makes them."""
    outs, states = [], []
    for b in range(q.shape[0]):
        qb, kb, vb = (x[b:b + 1].transpose(1, 2).contiguous() for x in (q, k, v))
        state = torch.zeros(1, H, D, D, device=q.device, dtype=torch.float32)
        o, kv = vllm_la.lightning_attention(qb, kb, vb, s.view(1, H, 1, 1), block_size=256,
                                            kv_history=state)
        outs.append(o.transpose(1, 2))
        states.append(kv[:, :, -1])
    return torch.cat(outs), torch.cat(states)


if vllm_la is not None:
    qf, kf, vf = (x.float() for x in (q, k, v))
    o, state = vllm_prefill(qf, kf, vf, s)
    print(f"vLLM prefill vs FP64 recurrence (T=512, FP32 inputs): rel err "
          f"{((o.double() - ref).norm() / ref.norm()).item():.2e}")
    # Decode: 8 tokens after the prefill, against the recurrence continued in FP64.
    cache = torch.zeros(4, H, D, D, device=dev, dtype=torch.float32)
    cache[2] = state[0]
    slots = torch.tensor([2], device=dev, dtype=torch.int64)
    S64 = state[0].double()
    lam = torch.exp(-s.double()).view(H, 1, 1)
    worst = 0.0
    for _ in range(8):
        qd, kd, vd = [(torch.rand(1, H, 1, D, device=dev) - 0.5) for _ in range(3)]
        od = vllm_la.linear_decode_forward_triton(qd, kd, vd, cache, s, slots)
        S64 = lam * S64 + kd[0, :, 0].double().unsqueeze(-1) * vd[0, :, 0].double().unsqueeze(-2)
        want = torch.einsum("hd,hde->he", qd[0, :, 0].double(), S64).reshape(1, -1)
        worst = max(worst, ((od.double() - want).norm() / want.norm()).item())
    print(f"vLLM decode vs FP64 recurrence (8 steps after T=512): worst rel err {worst:.2e}")

n = 1 << 30
src = torch.empty(n, dtype=torch.uint8, device=dev).fill_(1)
dst = torch.empty_like(src)
copy_ms = median_ms(lambda: dst.copy_(src))
copy_bw = 2 * n / (copy_ms * 1e-3)
del src, dst
print(f"device-to-device copy (torch): {copy_bw / 1e9:.0f} GB/s (bytes read + written)\n")

print(f"| {'kernel':<16} | {'B x T':<12} | {'variant':<10} | {'ms':>9} | {'Mtok/s':>10} | {'GB/s':>8} | {'floor':>6} |")
print("|------------------|--------------|------------|-----------|------------|----------|--------|")


def row(what, shape, variant, ms, tokens, nbytes):
    floor_ms = nbytes / copy_bw * 1e3
    print(f"| {what:<16} | {shape:<12} | {variant:<10} | {ms:9.3f} | {tokens / (ms * 1e-3) / 1e6:10.2f} | "
          f"{nbytes / (ms * 1e-3) / 1e9:8.0f} | {100 * floor_ms / ms:5.1f}% |")


for T in (8192, 32768, 131072):
    B = max(1, 32768 // T)
    # Uniform in [-0.5, 0.5), like lightning_bench's inputs.
    q, k, v = [(torch.rand(B, T, H, D, device=dev) - 0.5).bfloat16().requires_grad_() for _ in range(3)]
    do = (torch.rand(B, T, H, D, device=dev) - 0.5).bfloat16()
    shape = f"{B} x {T // 1024}K"
    tokens = B * T
    nelem = tokens * H * D
    with torch.no_grad():
        f = median_ms(lambda: chunk_simple_gla(q, k, v, g_gamma=-s, scale=1.0, output_final_state=True))
    row("fla prefill", shape, "fwd+state", f, tokens, 4 * nelem * 2 + B * H * D * D * 4)
    with torch.no_grad():
        f = median_ms(lambda: chunk_simple_gla(q, k, v, g_gamma=-s, scale=1.0))
    row("fla prefill", shape, "fwd", f, tokens, 4 * nelem * 2)
    fb = median_ms(lambda: chunk_simple_gla(q, k, v, g_gamma=-s, scale=1.0)[0].backward(do),
                   iters=max(3, ITERS // 2), warm=2)
    row("fla fwd+bwd", shape, "autograd", fb, tokens, 8 * nelem * 2)
    del q, k, v, do
    torch.cuda.empty_cache()

if vllm_la is not None:
    for T in (8192, 32768, 131072):
        B = max(1, 32768 // T)
        q, k, v = [(torch.rand(B, T, H, D, device=dev) - 0.5) for _ in range(3)]
        shape = f"{B} x {T // 1024}K"
        tokens = B * T
        nelem = tokens * H * D
        with torch.no_grad():
            f = median_ms(lambda: vllm_prefill(q, k, v, s))
        row("vLLM prefill", shape, "fp32+state", f, tokens, 4 * nelem * 4 + B * H * D * D * 4)
        del q, k, v
        torch.cuda.empty_cache()
    for nseq in (64, 256):
        cache = torch.zeros(nseq, H, D, D, device=dev, dtype=torch.float32)
        slots = torch.arange(nseq, device=dev, dtype=torch.int64)
        qd, kd, vd = [(torch.rand(nseq, H, 1, D, device=dev) - 0.5) for _ in range(3)]
        f = median_ms(lambda: vllm_la.linear_decode_forward_triton(qd, kd, vd, cache, s, slots))
        row("vLLM decode", f"{nseq} seqs", "fp32", f, nseq, 2 * nseq * H * D * D * 4 + 4 * nseq * H * D * 4)
        del cache
        torch.cuda.empty_cache()
