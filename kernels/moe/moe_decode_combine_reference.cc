#include "kernels/moe/moe_decode_combine_reference.h"

#include "kernels/rms_norm/rms_norm_reference.h"

namespace lightrl {

void ReferenceMoeDecodeCombine(const float* y, const float* combine, const float* residual,
                         int64_t tokens, int64_t experts, int64_t hidden, double alpha,
                         double beta, float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < hidden; ++i) {
      double moe = 0;
      for (int64_t e = 0; e < experts; ++e) {
        moe += double{combine[t * experts + e]} * y[(e * tokens + t) * hidden + i];
      }
      const double r = residual[t * hidden + i];
      out[t * hidden + i] = static_cast<float>(RoundToBf16(alpha * r + beta * RoundToBf16(moe)));
    }
  }
}

}  // namespace lightrl
