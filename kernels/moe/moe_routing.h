// The MoE router's decision as one kernel: softmax over the experts' FP32 logits, the top-k
// experts, their probabilities renormalised to sum to one (MiniMax's rule, policy/
// minimax_model.cc SparseMoeImpl::Route), written as ids and weights and, optionally, as
// the dense [tokens, experts] combine matrix the engine's decode step weights its experts
// with. Never syncs or allocates; capturable in a CUDA graph.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace lightrl {

constexpr int kMoeRoutingMaxExperts = 256;
constexpr int kMoeRoutingMaxTopK = 8;

// For each token t < tokens: p = softmax(logits[t, :]) (FP32, max-shifted); the top_k
// experts by p, larger first, ties to the lower expert index (torch.topk picks the same
// experts for distinct p but promises no order for equal ones); w_j = p_j / sum of the
// chosen p. Writes ids[t, j] and weights[t, j] (each optional) and combine[t, :] (optional:
// w at the chosen experts, zero elsewhere). All pointers are device pointers, rows
// contiguous.
struct MoeRoutingParams {
  const float* logits = nullptr;  // [tokens, experts], row stride logits_row_stride
  int64_t* ids = nullptr;         // [tokens, top_k]
  float* weights = nullptr;       // [tokens, top_k]
  float* combine = nullptr;       // [tokens, experts]
  int64_t logits_row_stride = 0;  // elements, >= experts
  int tokens = 0;
  int experts = 0;  // 1 .. kMoeRoutingMaxExperts
  int top_k = 0;    // 1 .. min(experts, kMoeRoutingMaxTopK)

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

// One warp per token. Returns cudaErrorInvalidValue for parameters Validate() rejects,
// else the launch's error.
cudaError_t LaunchMoeRouting(const MoeRoutingParams& params, cudaStream_t stream);

}  // namespace lightrl
