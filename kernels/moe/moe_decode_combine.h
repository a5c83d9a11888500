// The engine's decode-step MoE epilogue as one kernel: the routing-weighted sum of every
// expert's output rows (FP32) and the decoder block's scaled residual sum, where the step
// ran a cast, a batched GEMM, a cast back and a scaled add. Never syncs or allocates;
// capturable in a CUDA graph.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace lightrl {

// For t < tokens and i < hidden:
//   moe = bf16( sum over e = 0, 1, ... of combine[t, e] * y[e, t, i] )   (FP32, e ascending)
//   out[t, i] = bf16( alpha * residual[t, i] + beta * moe )              (FP32, one rounding)
// the rounding of the step's bf16 MoE output and of ScaledAdd (kernels/rms_norm/rms_norm.h).
// y [experts, tokens, hidden], residual and out [tokens, hidden] bf16 contiguous (out may
// alias residual); combine [tokens, experts] FP32 contiguous, zero off each token's top-k.
struct MoeDecodeCombineParams {
  const __nv_bfloat16* y = nullptr;
  const float* combine = nullptr;
  const __nv_bfloat16* residual = nullptr;
  __nv_bfloat16* out = nullptr;
  int tokens = 0;
  int experts = 0;  // >= 1
  int hidden = 0;   // >= 1
  float alpha = 1.0f;
  float beta = 1.0f;

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

// Returns cudaErrorInvalidValue for parameters Validate() rejects, else the launch's error.
cudaError_t LaunchMoeDecodeCombine(const MoeDecodeCombineParams& params, cudaStream_t stream);

}  // namespace lightrl
