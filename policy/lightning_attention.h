// Lightning (linear) attention with MiniMax's per-head exponential decay, as LibTorch ops:
// the token recurrence (the definition), the chunked intra/inter-block form (what the
// model and the CPU engine run) and the training op with a hand-written chunked backward.
// Internal to torch-linking targets. Shapes: q, k, v [B, H, T, d]; slope [H]; state
// [B, H, d, d] (FP32); lambda = exp(-slope).
#pragma once

#include <torch/torch.h>

#include <utility>

namespace lightrl {

// S_t = lambda S_{t-1} + k_t^T v_t, o_t = q_t S_t. Returns (o, final state).
std::pair<torch::Tensor, torch::Tensor> LightningRecurrent(const torch::Tensor& q,
                                                           const torch::Tensor& k,
                                                           const torch::Tensor& v,
                                                           const torch::Tensor& slope,
                                                           torch::Tensor state = {});

// The same function, block by block; any T (the last block may be short). Differentiable
// through autograd. state: initial state or undefined for zero.
std::pair<torch::Tensor, torch::Tensor> LightningChunked(const torch::Tensor& q,
                                                         const torch::Tensor& k,
                                                         const torch::Tensor& v,
                                                         const torch::Tensor& slope,
                                                         int64_t block_size,
                                                         torch::Tensor state = {});

// Training op: zero initial state, output only; its backward is three chunked passes
// (dq forward in time, dk and dv backward in time) instead of autograd's saved blocks.
torch::Tensor LightningAttentionTrain(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& slope,
                                      int64_t block_size);

}  // namespace lightrl
