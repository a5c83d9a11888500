// The model's RMSNorm as one kernel, with the policy's rounding (policy/minimax_model.cc
// RMSNormImpl), and the blocks' scaled residual sum as another. Owns the kernels and their
// launches; never syncs or allocates, and writes nothing but the output rows.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace lightrl {

// y[t, :] = bf16( float(w) * float( bf16( x[t, :] * rsqrt(mean(x[t, :]^2) + eps) ) ) ) for
// t < rows: the sum of squares in FP32, the normed row rounded to bf16 before the weight
// multiplies it, as the policy's eager ops do. All pointers are device pointers; rows are
// unit-stride along dim. The 16-byte path serves dim % 8 == 0 with 16-byte aligned rows;
// anything else takes the scalar path.
// With `gate`, the lightning block's gated norm (LightningAttentionImpl::Finish):
// y = bf16( float(bf16(sigmoid(gate))) * float(y_norm) ), the three roundings of eager
// torch's sigmoid, norm and product, in one kernel.
struct RmsNormParams {
  const __nv_bfloat16* x = nullptr;       // [rows, dim], row stride x_row_stride
  const __nv_bfloat16* weight = nullptr;  // [dim]
  __nv_bfloat16* y = nullptr;             // [rows, dim], row stride y_row_stride
  int64_t x_row_stride = 0;               // elements; >= dim
  int64_t y_row_stride = 0;               // elements; >= dim
  int rows = 0;
  int dim = 0;                            // 1 .. kRmsNormMaxDim
  float eps = 1e-5f;
  const __nv_bfloat16* gate = nullptr;    // optional [rows, dim], row stride gate_row_stride
  int64_t gate_row_stride = 0;            // elements; >= dim when gate is set

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

constexpr int kRmsNormMaxDim = 1 << 16;

// Launches one CTA per row on `stream`. Returns cudaErrorInvalidValue for parameters that
// Validate() rejects, else the launch's error.
cudaError_t LaunchRmsNorm(const RmsNormParams& params, cudaStream_t stream);

// out[i] = bf16(alpha * float(a[i]) + beta * float(b[i])) for i < n: the decoder block's
// residual combination. Torch's `a * alpha + b * beta` in bf16 rounds after each of its
// three ops; this rounds once, from FP32, so it can differ from the eager result by a bf16
// ulp, always towards the exact value. All three arrays are contiguous device memory.
struct ScaledAddParams {
  const __nv_bfloat16* a = nullptr;
  const __nv_bfloat16* b = nullptr;
  __nv_bfloat16* out = nullptr;  // may alias a or b
  int64_t n = 0;
  float alpha = 1.0f;
  float beta = 1.0f;

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

// Launches on `stream`; errors as LaunchRmsNorm.
cudaError_t LaunchScaledAdd(const ScaledAddParams& params, cudaStream_t stream);

}  // namespace lightrl
