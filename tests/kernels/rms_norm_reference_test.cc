// The RMSNorm oracle's bf16 rounding against hand-worked values (ties to even, overflow,
// the subnormal range), and its norm against facts that do not depend on how it computes.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/rms_norm/rms_norm_reference.h"

namespace lightrl {
namespace {

TEST(RoundToBf16, KeepsEightSignificantBitsTiesToEven) {
  const double ulp1 = std::ldexp(1.0, -7);  // bf16 spacing in [1, 2)
  EXPECT_EQ(RoundToBf16(1.0), 1.0);
  EXPECT_EQ(RoundToBf16(1.0 + ulp1), 1.0 + ulp1);
  EXPECT_EQ(RoundToBf16(1.0 + ulp1 / 2), 1.0);                   // tie, to even
  EXPECT_EQ(RoundToBf16(1.0 + 3 * ulp1 / 2), 1.0 + 2 * ulp1);    // tie, to even
  EXPECT_EQ(RoundToBf16(1.0 + ulp1 / 2 + 1e-9), 1.0 + ulp1);     // past the tie
  EXPECT_EQ(RoundToBf16(-1.0 - ulp1 / 2 - 1e-9), -1.0 - ulp1);
  EXPECT_EQ(RoundToBf16(3.140625), 3.140625);                    // exactly representable
  EXPECT_EQ(RoundToBf16(0.0), 0.0);
}

TEST(RoundToBf16, OverflowSubnormalsAndNan) {
  EXPECT_EQ(RoundToBf16(std::ldexp(255.4, 120)), std::ldexp(255.0, 120));  // largest finite
  EXPECT_TRUE(std::isinf(RoundToBf16(std::ldexp(255.5, 120))));  // tie, to even: 2^128
  EXPECT_TRUE(std::isinf(RoundToBf16(-3.4e38)));
  EXPECT_EQ(RoundToBf16(std::ldexp(1.0, -133)), std::ldexp(1.0, -133));
  EXPECT_EQ(RoundToBf16(std::ldexp(1.0, -135)), 0.0);
  EXPECT_EQ(RoundToBf16(std::ldexp(3.0, -134)), std::ldexp(1.0, -132));  // tie, to even
  EXPECT_TRUE(std::isnan(RoundToBf16(NAN)));
}

TEST(ReferenceRmsNorm, ConstantRowIsItsSignTimesWeight) {
  const std::vector<float> x = {-3.0f, -3.0f, -3.0f, -3.0f};
  const std::vector<float> w = {1.0f, 2.0f, 0.5f, -1.0f};
  std::vector<float> y(4);
  ReferenceRmsNorm(x.data(), 4, w.data(), 1, 4, 0.0, y.data(), 4);
  EXPECT_EQ(y, (std::vector<float>{-1.0f, -2.0f, -0.5f, 1.0f}));
}

TEST(ReferenceRmsNorm, ScaleInvariantWithoutEpsAndRowsApart) {
  const std::vector<float> x = {1.0f, -2.0f, 0.5f, 7.0f, 0.0f, /*row 2*/ 4.0f, -8.0f, 2.0f,
                                28.0f, 0.0f};
  const std::vector<float> w = {1.0f, 0.75f, -1.5f, 2.0f, 3.0f};
  std::vector<float> y(12, -99.0f);
  ReferenceRmsNorm(x.data(), 5, w.data(), 2, 5, 0.0, y.data(), 6);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(y[i], y[6 + i]) << i;
  EXPECT_EQ(y[5], -99.0f);  // the stride gap is untouched
  EXPECT_EQ(y[11], -99.0f);
}

// A gate far above zero passes the norm through (sigmoid rounds to 1); far below, it
// closes it (sigmoid ~ e^g); at zero it halves it exactly.
TEST(ReferenceGatedRmsNorm, GateOpensClosesAndHalves) {
  const std::vector<float> x = {0.5f, -1.25f, 2.0f, 0.75f}, w = {1.0f, 0.5f, 2.0f, -1.0f};
  std::vector<float> norm(4), gated(4);
  ReferenceRmsNorm(x.data(), 4, w.data(), 1, 4, 1e-6, norm.data(), 4);
  const std::vector<float> open(4, 40.0f), half(4, 0.0f), shut(4, -120.0f);
  ReferenceGatedRmsNorm(x.data(), 4, w.data(), open.data(), 4, 1, 4, 1e-6, gated.data(), 4);
  EXPECT_EQ(gated, norm);
  ReferenceGatedRmsNorm(x.data(), 4, w.data(), half.data(), 4, 1, 4, 1e-6, gated.data(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(gated[i], norm[i] / 2) << i;
  ReferenceGatedRmsNorm(x.data(), 4, w.data(), shut.data(), 4, 1, 4, 1e-6, gated.data(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_LT(std::fabs(gated[i]), 1e-50 + 1e-40 * std::fabs(norm[i])) << i;
}

TEST(ReferenceScaledAdd, RoundsOnce) {
  const std::vector<float> a = {1.0f, 2.0f};
  const std::vector<float> b = {std::ldexp(1.0f, -9), -0.5f};
  std::vector<float> out(2);
  ReferenceScaledAdd(a.data(), b.data(), 2, 3.0, 1.0, out.data());
  EXPECT_EQ(out[0], 3.0f);  // 3 + 2^-9 is below half a bf16 ulp of 3
  EXPECT_EQ(out[1], 5.5f);
}

}  // namespace
}  // namespace lightrl
