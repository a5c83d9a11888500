// The batch-invariant mode's own exp and log (kernels/invariant/invariant_math.h), which the
// CPU ops and the CUDA kernels share: their error against the double-precision functions
// over every range the mode feeds them, and their special values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "kernels/invariant/invariant_math.h"

namespace lightrl {
namespace {

// |got - exact| in units of the last place of the float nearest `exact`.
double UlpError(float got, double exact) {
  const float nearest = static_cast<float>(exact);
  if (nearest == 0.0f || std::isinf(nearest)) return got == nearest ? 0.0 : 1e9;
  const double ulp = std::nextafter(std::fabs(nearest), std::numeric_limits<float>::infinity()) -
                     std::fabs(nearest);
  return std::fabs(static_cast<double>(got) - exact) / ulp;
}

TEST(InvariantMath, ExpIsWithinTwoUlpsAcrossTheNormalRange) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> any(-87.3f, 88.7f), near_zero(-1.0f, 1.0f);
  double worst = 0;
  float worst_x = 0;
  for (int i = 0; i < 400000; ++i) {
    const float x = i % 2 ? any(rng) : near_zero(rng);
    const double e = UlpError(inv::InvExp(x), std::exp(static_cast<double>(x)));
    if (e > worst) worst = e, worst_x = x;
  }
  // Every softmax input is <= 0 (x - max): sweep that side densely too.
  for (float x = -30.0f; x <= 0.0f; x += 1.0f / 4096) {
    const double e = UlpError(inv::InvExp(x), std::exp(static_cast<double>(x)));
    if (e > worst) worst = e, worst_x = x;
  }
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
}

TEST(InvariantMath, ExpSubnormalOverflowAndSpecialValues) {
  EXPECT_EQ(inv::InvExp(0.0f), 1.0f);
  EXPECT_EQ(inv::InvExp(-0.0f), 1.0f);
  EXPECT_TRUE(std::isinf(inv::InvExp(89.0f)));
  EXPECT_TRUE(std::isinf(inv::InvExp(std::numeric_limits<float>::infinity())));
  EXPECT_EQ(inv::InvExp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(inv::InvExp(-200.0f), 0.0f);
  EXPECT_TRUE(std::isnan(inv::InvExp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_LE(UlpError(inv::InvExp(88.7f), std::exp(static_cast<double>(88.7f))), 2.0);
  // Subnormal results: within one subnormal step (2^-149) of the exact value.
  for (float x = -103.0f; x < -87.4f; x += 0.37f) {
    const double exact = std::exp(static_cast<double>(x));
    EXPECT_LE(std::fabs(inv::InvExp(x) - exact), std::ldexp(1.0, -149) * 1.01 + exact * 1.2e-7)
        << "x = " << x;
  }
}

TEST(InvariantMath, LogIsWithinTwoUlps) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-140, 127);
  double worst = 0;
  float worst_x = 0;
  for (int i = 0; i < 400000; ++i) {
    const float x = std::ldexp(mantissa(rng), exponent(rng));
    if (!(x > 0) || std::isinf(x)) continue;
    const double e = UlpError(inv::InvLog(x), std::log(static_cast<double>(x)));
    if (e > worst) worst = e, worst_x = x;
  }
  // The LM head's sums of exponentials: 1 .. vocabulary size, and near 1 where ln x ~ 0.
  for (float x = 1.0f; x < 300000.0f; x = x * 1.0001f + 1e-3f) {
    const double e = UlpError(inv::InvLog(x), std::log(static_cast<double>(x)));
    if (e > worst) worst = e, worst_x = x;
  }
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
}

TEST(InvariantMath, LogSpecialValues) {
  EXPECT_EQ(inv::InvLog(1.0f), 0.0f);
  EXPECT_TRUE(std::isinf(inv::InvLog(0.0f)) && inv::InvLog(0.0f) < 0);
  EXPECT_TRUE(std::isnan(inv::InvLog(-1.0f)));
  EXPECT_TRUE(std::isnan(inv::InvLog(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isinf(inv::InvLog(std::numeric_limits<float>::infinity())));
  const float tiny = std::numeric_limits<float>::denorm_min();
  EXPECT_LE(UlpError(inv::InvLog(tiny), std::log(static_cast<double>(tiny))), 2.0);
  EXPECT_LE(UlpError(inv::InvLog(std::numeric_limits<float>::max()),
                     std::log(static_cast<double>(std::numeric_limits<float>::max()))),
            2.0);
}

TEST(InvariantMath, MaxFollowsStdMaxOnTiesAndNan) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(inv::Max(1.0f, 2.0f), 2.0f);
  EXPECT_TRUE(std::signbit(inv::Max(-0.0f, 0.0f)));  // (a < b) is false: a
  EXPECT_TRUE(std::isnan(inv::Max(nan, 1.0f)));
  EXPECT_EQ(inv::Max(1.0f, nan), 1.0f);
}

}  // namespace
}  // namespace lightrl
