// Training entry points of lightning attention on the GPU: forward and backward with zero
// initial state and no state output, built from the prefill kernel. The backward is three
// forward passes with the same decay: dq = F(do, v, k), dk = R(v, do, q), dv = R(k, q, do),
// F forward-time and R reverse-time. Owns no memory; the caller provides every buffer.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/lightning/lightning_prefill.h"

namespace lightrl {

// The packed batch shared by the forward and the backward. Device pointers.
struct LightningTrainParams {
  const int32_t* cu_seqlens = nullptr;  // [num_seqs + 1]
  const float* slopes = nullptr;        // [H]
  int num_seqs = 0;
  int num_heads = 0;
  int head_dim = 0;    // 64 or 128
  int max_seqlen = 0;  // host-side bound on the longest sequence; 0: long
  int64_t num_tokens = 0;  // rows of every view (LightningPrefillParams::num_tokens)
};

// o_t = sum_{s <= t} lambda^(t-s) (q_t . k_s) v_s.
cudaError_t LaunchLightningTrainForward(const LightningTrainParams& params,
                                        LightningInputView q, LightningInputView k,
                                        LightningInputView v, LightningOutputView o,
                                        cudaStream_t stream);

// Gradients of sum(o . d_o) with respect to q, k and v.
cudaError_t LaunchLightningTrainBackward(const LightningTrainParams& params,
                                         LightningInputView q, LightningInputView k,
                                         LightningInputView v, LightningInputView d_o,
                                         LightningOutputView dq, LightningOutputView dk,
                                         LightningOutputView dv, cudaStream_t stream);

}  // namespace lightrl
