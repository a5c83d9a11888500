// GPU tests of the RoPE kernel against its reference: fresh random rows, positions and
// tables of real angles every run (the seed is printed on failure), rotary_dim below and
// equal to head_dim, several heads.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/rope/rope.h"
#include "kernels/rope/rope_reference.h"
#include "tests/kernels/cuda_test_util.h"

namespace lightrl {
namespace {

struct RopeCase {
  int tokens, heads, head_dim, rotary_dim;
};

class RopeTest : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeTest, MatchesReference) {
  const RopeCase c = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int64_t max_pos = 4096;
  std::vector<float> x, cos_f(max_pos * c.rotary_dim), sin_f(max_pos * c.rotary_dim);
  auto x_host = RandomBf16(static_cast<size_t>(c.tokens) * c.heads * c.head_dim, 1.0f, rng, &x);
  std::vector<__nv_bfloat16> cos_h(cos_f.size()), sin_h(sin_f.size());
  for (int64_t p = 0; p < max_pos; ++p) {
    for (int i = 0; i < c.rotary_dim; ++i) {
      const int j = i % (c.rotary_dim / 2);
      const double angle = p * std::pow(1e6, -2.0 * j / c.rotary_dim);
      const size_t at = static_cast<size_t>(p) * c.rotary_dim + i;
      cos_h[at] = __float2bfloat16_rn(static_cast<float>(std::cos(angle)));
      sin_h[at] = __float2bfloat16_rn(static_cast<float>(std::sin(angle)));
      cos_f[at] = ToFloat(cos_h[at]);
      sin_f[at] = ToFloat(sin_h[at]);
    }
  }
  std::vector<int64_t> positions(c.tokens);
  std::uniform_int_distribution<int64_t> pick(0, max_pos - 1);
  for (auto& p : positions) p = pick(rng);
  DeviceBuffer<__nv_bfloat16> x_dev(x_host), cos_dev(cos_h), sin_dev(sin_h);
  DeviceBuffer<__nv_bfloat16> y_dev(x_host.size());
  DeviceBuffer<int64_t> pos_dev(positions);
  RopeParams p;
  p.x = x_dev.get();
  p.y = y_dev.get();
  p.positions = pos_dev.get();
  p.cos_table = cos_dev.get();
  p.sin_table = sin_dev.get();
  p.tokens = c.tokens;
  p.heads = c.heads;
  p.head_dim = c.head_dim;
  p.rotary_dim = c.rotary_dim;
  p.max_positions = max_pos;
  ASSERT_EQ(p.Validate(), nullptr);
  CUDA_CHECK(LaunchRope(p, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto y = y_dev.Download();
  std::vector<float> ref(x.size());
  ReferenceRope(x.data(), positions.data(), cos_f.data(), sin_f.data(), c.tokens, c.heads,
                c.head_dim, c.rotary_dim, ref.data());
  int64_t identical = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double got = ToFloat(y[i]);
    // The sum of two bf16 products rounds once in FP32 first on the GPU: at most one ulp.
    ASSERT_LE(std::fabs(got - ref[i]), 1.01 * Bf16Ulp(std::fabs(ref[i]))) << "at " << i;
    identical += got == ref[i] ? 1 : 0;
  }
  EXPECT_GE(static_cast<double>(identical), 0.99 * static_cast<double>(ref.size()));
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeTest,
                         ::testing::Values(RopeCase{1, 8, 128, 128}, RopeCase{64, 8, 128, 64},
                                           RopeCase{256, 2, 128, 128}, RopeCase{7, 3, 64, 32}),
                         [](const ::testing::TestParamInfo<RopeCase>& info) {
                           const RopeCase& c = info.param;
                           return "t" + std::to_string(c.tokens) + "_h" + std::to_string(c.heads) +
                                  "_d" + std::to_string(c.head_dim) + "_r" +
                                  std::to_string(c.rotary_dim);
                         });

TEST(RopeValidate, RejectsBadParameters) {
  DeviceBuffer<__nv_bfloat16> a(64), b(64);
  DeviceBuffer<int64_t> pos(1);
  RopeParams p;
  p.x = a.get();
  p.y = b.get();
  p.positions = pos.get();
  p.cos_table = p.sin_table = a.get();
  p.tokens = 1;
  p.heads = 1;
  p.head_dim = 8;
  p.rotary_dim = 8;
  p.max_positions = 8;
  EXPECT_EQ(p.Validate(), nullptr);
  RopeParams bad = p;
  bad.rotary_dim = 3;
  EXPECT_NE(bad.Validate(), nullptr);
  EXPECT_EQ(LaunchRope(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.y = a.get();
  EXPECT_NE(bad.Validate(), nullptr);
  bad = p;
  bad.rotary_dim = 16;
  EXPECT_NE(bad.Validate(), nullptr);
}

}  // namespace
}  // namespace lightrl
