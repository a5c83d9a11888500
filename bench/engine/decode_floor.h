// The bytes one decode step must move on the GPU, from the model's own parameter list and
// the engine's cache geometry, and the device's copy bandwidth: the floor a decode step is
// measured against (engine_bench prints its time as a share of it). Owns no engine state.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"

namespace lightrl {

struct DecodeStepBytes {
  int64_t dense_weights = 0;  // attention, norms, routers, the LM head (read once)
  int64_t expert_weights = 0; // the experts' weights times the expected share a batch touches
  int64_t embedding_rows = 0; // the batch's embedding rows (untied embeddings)
  int64_t states = 0;         // lightning states, read and written
  int64_t kv = 0;             // softmax K/V pages read at the given context length
  int64_t logits = 0;         // the FP32 logits written
  int64_t total() const {
    return dense_weights + expert_weights + embedding_rows + states + kv + logits;
  }
};

// `context` is the mean number of positions each sequence attends to during the step;
// experts are counted as touched with the probability that at least one of the batch's
// tokens routes to them under uniform routing (1 - (1 - k/E)^batch).
DecodeStepBytes DecodeFloorBytes(const PolicyModel& policy, int64_t dtype_bytes, int64_t batch,
                                 int64_t context, const EngineStats& stats);

// The work of prefilling one prompt of `len` tokens (time to first token): the GEMMs'
// FLOPs (attention projections, the router, the top-k experts each token routes to, the
// LM head for the last position), the attention FLOPs (lightning's chunked form with its
// block size: the causal half of each block's QK^T and PV, and each token's q S and
// k^T v state products; softmax attention's causal QK^T and PV) and the weight bytes read
// once. The floor is max(FLOPs / matmul peak, bytes / copy bandwidth).
struct PrefillWork {
  double gemm_flops = 0;
  double attention_flops = 0;
  int64_t weight_bytes = 0;
  double flops() const { return gemm_flops + attention_flops; }
};
PrefillWork PrefillFloorWork(const PolicyModel& policy, int64_t dtype_bytes, int64_t len);

// Dense bf16 matrix-product rate of the current CUDA device (FLOP/s), from cuBLAS at
// n x n x n with FP32 accumulation (several timed products).
absl::StatusOr<double> MatmulPeak(int64_t n = 8192);

// Device-to-device copy bandwidth (bytes read + bytes written per second) of the current
// CUDA device, measured with cudaMemcpyAsync over `bytes` (several timed copies).
absl::StatusOr<double> CopyBandwidth(int64_t bytes = int64_t{1} << 30);

}  // namespace lightrl
