// Torch adapter of the lightning CUDA kernels for the engine's CUDA backend: checks the
// shapes, dtypes and devices of torch tensors, takes their data pointers and the current
// CUDA stream, and calls the torch-free launchers of inference_engine/cuda/. Owns no
// memory beyond the outputs it returns; it never syncs. Built only with
// LIGHTRL_TORCH_CUDA (compile definition LIGHTRL_ENGINE_CUDA); internal (torch) header.
#pragma once

#include <torch/torch.h>

namespace lightrl {

// Whether the kernels serve tensors of this device, dtype and head size: CUDA, bf16,
// head_dim 64 or 128. Anything else runs the torch ops.
bool CudaLightningSupported(const torch::Device& device, torch::ScalarType dtype,
                            int64_t head_dim);

// Varlen prefill from zero states. q, k, v: [T, H, d] bf16 views with unit stride on d
// and strides that are multiples of 8 (e.g. the splits of the fused qkv projection);
// cu_seqlens: [n + 1] int32 token offsets; slots: [n] int32 state slots; state: the
// [num_slots, H, d, d] FP32 pool, whose slots[i] receives sequence i's final state;
// slopes: [H] FP32. Returns o [T, H, d] bf16.
torch::Tensor LightningPrefillCuda(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& cu_seqlens,
                                   const torch::Tensor& slots, torch::Tensor& state,
                                   const torch::Tensor& slopes, int64_t max_seqlen);

// One fused decode step: state[slots[b]] = lambda * state[slots[b]] + k_b^T v_b and
// o_b = q_b state[slots[b]], for q, k, v [B, H, d] bf16 views as above. Returns o
// [B, H, d] bf16.
torch::Tensor LightningDecodeCuda(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const torch::Tensor& slots,
                                  torch::Tensor& state, const torch::Tensor& slopes);

}  // namespace lightrl
