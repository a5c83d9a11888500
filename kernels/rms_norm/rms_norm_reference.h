// Plain C++ oracle of the RMSNorm and scaled-add kernels (kernels/rms_norm/rms_norm.h):
// sums in double, with the policy's bf16 roundings spelled out. Torch-free and GPU-free;
// values travel as floats that hold bf16 numbers.
#pragma once

#include <cstdint>

namespace lightrl {

// v rounded to the nearest bf16 (ties to even), returned as a double; overflow gives
// +-inf and NaN stays NaN.
double RoundToBf16(double v);

// y[t, i] = bf16(w[i] * bf16(x[t, i] / sqrt(mean_i(x[t, :]^2) + eps))) for t < rows, rows
// row-major with the given strides (elements).
void ReferenceRmsNorm(const float* x, int64_t x_row_stride, const float* weight, int64_t rows,
                      int64_t dim, double eps, float* y, int64_t y_row_stride);

// The gated norm: y[t, i] = bf16(bf16(sigmoid(gate[t, i])) * norm[t, i]) with norm[t, i]
// as ReferenceRmsNorm writes it; gate rows have stride gate_row_stride.
void ReferenceGatedRmsNorm(const float* x, int64_t x_row_stride, const float* weight,
                           const float* gate, int64_t gate_row_stride, int64_t rows, int64_t dim,
                           double eps, float* y, int64_t y_row_stride);

// out[i] = bf16(alpha * a[i] + beta * b[i]), one rounding.
void ReferenceScaledAdd(const float* a, const float* b, int64_t n, double alpha, double beta,
                        float* out);

}  // namespace lightrl
