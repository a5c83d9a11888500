#include "kernels/rms_norm/rms_norm_reference.h"

#include <algorithm>
#include <cmath>

namespace lightrl {

double RoundToBf16(double v) {
  if (!std::isfinite(v) || v == 0.0) return v;
  // bf16 keeps 8 significant bits; below its smallest normal (2^-126) the spacing stays
  // 2^-133. nearbyint rounds half to even in the default rounding mode.
  const int exponent = std::max(std::ilogb(v), -126);
  const double ulp = std::ldexp(1.0, exponent - 7);
  const double r = std::nearbyint(v / ulp) * ulp;
  // Anything that rounds to 2^128 or beyond is past bf16's largest finite value.
  return std::fabs(r) >= std::ldexp(1.0, 128) ? std::copysign(INFINITY, v) : r;
}

void ReferenceRmsNorm(const float* x, int64_t x_row_stride, const float* weight, int64_t rows,
                      int64_t dim, double eps, float* y, int64_t y_row_stride) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = x + t * x_row_stride;
    double sum_sq = 0.0;
    for (int64_t i = 0; i < dim; ++i) sum_sq += double{xr[i]} * xr[i];
    const double inv = 1.0 / std::sqrt(sum_sq / static_cast<double>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) {
      const double normed = RoundToBf16(xr[i] * inv);
      y[t * y_row_stride + i] = static_cast<float>(RoundToBf16(weight[i] * normed));
    }
  }
}

void ReferenceGatedRmsNorm(const float* x, int64_t x_row_stride, const float* weight,
                           const float* gate, int64_t gate_row_stride, int64_t rows, int64_t dim,
                           double eps, float* y, int64_t y_row_stride) {
  ReferenceRmsNorm(x, x_row_stride, weight, rows, dim, eps, y, y_row_stride);
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t i = 0; i < dim; ++i) {
      const double s = RoundToBf16(1.0 / (1.0 + std::exp(-double{gate[t * gate_row_stride + i]})));
      float& out = y[t * y_row_stride + i];
      out = static_cast<float>(RoundToBf16(s * out));
    }
  }
}

void ReferenceScaledAdd(const float* a, const float* b, int64_t n, double alpha, double beta,
                        float* out) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<float>(RoundToBf16(alpha * a[i] + beta * b[i]));
  }
}

}  // namespace lightrl
