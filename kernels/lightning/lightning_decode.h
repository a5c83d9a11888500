// One lightning-attention decode step for a batch of sequences: updates each sequence's
// FP32 state in its slot of the state pool in place and writes o = q (lambda S + k^T v),
// fused in one pass over the state (the step is bound by reading and writing the state).
// Owns the kernel and its launch; slots not named in the batch are never touched.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/lightning/lightning_prefill.h"

namespace lightrl {

// q, k, v, o are [batch, H, d] views (LightningInputView's token axis is the batch axis).
// Per sequence b with slot = state_slots[b] and head h, lambda = exp(-slopes[h]):
//   S = lambda S + k^T v  (state[slot][h] updated in place),  o = q S.
// A negative slot skips the sequence: its state and its o row are left untouched, so a
// captured CUDA graph can run a padded batch. All pointers are device pointers.
struct LightningDecodeParams {
  LightningInputView q;
  LightningInputView k;
  LightningInputView v;
  LightningOutputView o;
  const int32_t* state_slots = nullptr;  // [batch]
  float* state = nullptr;                // [num_slots, H, d, d] FP32 pool
  const float* slopes = nullptr;         // [H]
  int batch = 0;
  int num_heads = 0;
  int head_dim = 0;                      // 64 or 128

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

// Launches the step on `stream`. Returns cudaErrorInvalidValue for parameters that
// Validate() rejects, else the launch's error.
cudaError_t LaunchLightningDecode(const LightningDecodeParams& params, cudaStream_t stream);

}  // namespace lightrl
