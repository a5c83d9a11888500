#include "kernels/rope/rope_reference.h"

#include "kernels/rms_norm/rms_norm_reference.h"

namespace lightrl {

void ReferenceRope(const float* x, const int64_t* positions, const float* cos_table,
                   const float* sin_table, int64_t tokens, int64_t heads, int64_t head_dim,
                   int64_t rotary_dim, float* y) {
  const int64_t half = rotary_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = cos_table + positions[t] * rotary_dim;
    const float* s = sin_table + positions[t] * rotary_dim;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xr = x + (t * heads + h) * head_dim;
      float* yr = y + (t * heads + h) * head_dim;
      for (int64_t i = 0; i < head_dim; ++i) {
        if (i >= rotary_dim) {
          yr[i] = xr[i];
          continue;
        }
        const double other = i < half ? -double{xr[i + half]} : double{xr[i - half]};
        const double a = RoundToBf16(double{xr[i]} * c[i]);
        const double b = RoundToBf16(other * s[i]);
        yr[i] = static_cast<float>(RoundToBf16(a + b));
      }
    }
  }
}

}  // namespace lightrl
