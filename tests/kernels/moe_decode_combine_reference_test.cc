// The MoE combine oracle against hand-worked values: the weighted sum, its bf16 rounding
// before the residual sum, and the layout of y as [experts, tokens, hidden].
#include <gtest/gtest.h>

#include <vector>

#include "kernels/moe/moe_decode_combine_reference.h"

namespace lightrl {
namespace {

TEST(ReferenceMoeDecodeCombine, WeightsExpertsRowsThenAddsTheScaledResidual) {
  // 2 tokens, 2 experts, hidden 2. y[e][t][i].
  const std::vector<float> y = {1, 2, 3, 4,     // expert 0: token 0 (1, 2), token 1 (3, 4)
                                10, 20, 30, 40};  // expert 1
  const std::vector<float> combine = {0.25f, 0.75f,  // token 0
                                      1.0f, 0.0f};   // token 1: expert 0 only
  const std::vector<float> residual = {1, -1, 0.5f, 2};
  std::vector<float> out(4);
  ReferenceMoeDecodeCombine(y.data(), combine.data(), residual.data(), 2, 2, 2, 2.0, 0.5, out.data());
  // token 0: moe = (0.25 + 7.5, 0.5 + 15) = (7.75, 15.5); out = 2 r + moe / 2.
  EXPECT_EQ(out[0], 2.0f + 3.875f);
  EXPECT_EQ(out[1], -2.0f + 7.75f);
  // token 1: moe = (3, 4).
  EXPECT_EQ(out[2], 1.0f + 1.5f);
  EXPECT_EQ(out[3], 4.0f + 2.0f);
}

TEST(ReferenceMoeDecodeCombine, RoundsTheMoeSumToBf16BeforeTheResidual) {
  // With u = 2^-7 the bf16 spacing at 1: the MoE sum 1 + 0.4u rounds to 1 before the
  // residual 0.4u is added, and 1 + 0.4u rounds to 1 again; summed unrounded it would be
  // 1 + 0.8u, which rounds to 1 + u.
  const float tiny = 0.4f / 128;
  const std::vector<float> y = {1.0f, tiny};
  const std::vector<float> combine = {1.0f, 1.0f};
  const std::vector<float> residual = {tiny};
  std::vector<float> out(1);
  ReferenceMoeDecodeCombine(y.data(), combine.data(), residual.data(), 1, 2, 1, 1.0, 1.0, out.data());
  EXPECT_EQ(out[0], 1.0f);
  ReferenceMoeDecodeCombine(y.data(), combine.data(), residual.data(), 1, 2, 1, 1.0, 0.0, out.data());
  EXPECT_EQ(out[0], static_cast<float>(0.0031280517578125));  // bf16(0.4u)
}

}  // namespace
}  // namespace lightrl
