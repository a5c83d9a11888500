// Rotary position embedding (NeoX style, the policy's SoftmaxAttentionImpl::ApplyRope) of
// the engine's decode step as one kernel, reading per-position cos / sin rows from tables
// made once, where the step computed the angles, their cos and sin and the rotation in
// about fifteen kernels for q and again for k. Never syncs or allocates; capturable.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace lightrl {

// For t < tokens, h < heads, i < head_dim, with r = rotary_dim, half = r / 2, p =
// positions[t], c = cos_table[p, i], s = sin_table[p, i]:
//   i <  half: y = bf16( bf16(x_i * c) + bf16(-x_{i+half} * s) )
//   half <= i < r: y = bf16( bf16(x_i * c) + bf16(x_{i-half} * s) )
//   i >= r: y = x_i
// eager torch's roundings of `rot * cos + rotated * sin` in bf16. x and y are [tokens,
// heads, head_dim] contiguous (y may not alias x); the tables [max_positions, rotary_dim]
// contiguous bf16; positions int64 in [0, max_positions).
struct RopeParams {
  const __nv_bfloat16* x = nullptr;
  __nv_bfloat16* y = nullptr;
  const int64_t* positions = nullptr;
  const __nv_bfloat16* cos_table = nullptr;
  const __nv_bfloat16* sin_table = nullptr;
  int tokens = 0;
  int heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;      // even, 2 .. head_dim
  int64_t max_positions = 0;

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

// One thread per element pair; a position out of range leaves its row untouched (the
// caller's positions come from the scheduler). Returns cudaErrorInvalidValue for
// parameters Validate() rejects, else the launch's error.
cudaError_t LaunchRope(const RopeParams& params, cudaStream_t stream);

}  // namespace lightrl
