// The RoPE oracle against hand-worked rotations: position 0 (cos 1, sin 0) is the
// identity, a quarter turn maps (a, b) to (-b, a) pairwise, and the dims past rotary_dim
// are copied.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/rope/rope_reference.h"

namespace lightrl {
namespace {

TEST(ReferenceRope, IdentityAtCosOneAndQuarterTurnAtSinOne) {
  // 1 token, 1 head, head_dim 6, rotary_dim 4: pairs (x0, x2) and (x1, x3); x4, x5 copied.
  const std::vector<float> x = {1.5f, -2.0f, 0.25f, 3.0f, 7.0f, -8.0f};
  const std::vector<float> cos_table = {1, 1, 1, 1,   // position 0
                                        0, 0, 0, 0};  // position 1: a quarter turn
  const std::vector<float> sin_table = {0, 0, 0, 0, 1, 1, 1, 1};
  std::vector<float> y(6);
  const int64_t p0 = 0, p1 = 1;
  ReferenceRope(x.data(), &p0, cos_table.data(), sin_table.data(), 1, 1, 6, 4, y.data());
  EXPECT_EQ(y, x);
  ReferenceRope(x.data(), &p1, cos_table.data(), sin_table.data(), 1, 1, 6, 4, y.data());
  EXPECT_EQ(y, (std::vector<float>{-0.25f, -3.0f, 1.5f, -2.0f, 7.0f, -8.0f}));
}

TEST(ReferenceRope, RoundsEachProductAndTheSumToBf16) {
  // x0 * c = 1 + 2^-8 rounds to 1 (ties to even); -x2 * s = 2^-8 exactly; 1 + 2^-8
  // rounds to 1 again, where one rounding of the exact sum 1 + 2^-7 would keep it.
  const float u = 1.0f / 256;
  const std::vector<float> x = {1.0f, 0.0f, -1.0f, 0.0f};
  const std::vector<float> cos_table = {1.0f + u, 1.0f};
  const std::vector<float> sin_table = {u, 0.0f};
  std::vector<float> y(4);
  const int64_t p = 0;
  ReferenceRope(x.data(), &p, cos_table.data(), sin_table.data(), 1, 1, 4, 2, y.data());
  EXPECT_EQ(y[0], 1.0f);
}

}  // namespace
}  // namespace lightrl
