// GPU tests of the MoE combine kernel against its reference: fresh random expert rows,
// top-k-sparse combine rows and residuals every run (the seed is printed on failure), on
// the 16-byte path and off it (hidden 1000), in place over the residual as the engine runs
// it, and a row count of one.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/moe/moe_decode_combine.h"
#include "kernels/moe/moe_decode_combine_reference.h"
#include "tests/kernels/cuda_test_util.h"

namespace lightrl {
namespace {

struct CombineCase {
  int tokens, experts, top_k, hidden;
};

class MoeDecodeCombineTest : public ::testing::TestWithParam<CombineCase> {};

TEST_P(MoeDecodeCombineTest, MatchesReferenceInPlace) {
  const CombineCase c = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<float> y, residual;
  auto y_host = RandomBf16(static_cast<size_t>(c.experts) * c.tokens * c.hidden, 1.5f, rng, &y);
  auto r_host = RandomBf16(static_cast<size_t>(c.tokens) * c.hidden, 2.0f, rng, &residual);
  // Each token's weights: top_k distinct experts with positive weights summing to one.
  std::vector<float> combine(static_cast<size_t>(c.tokens) * c.experts, 0.f);
  std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
  for (int t = 0; t < c.tokens; ++t) {
    std::vector<int> order(c.experts);
    for (int e = 0; e < c.experts; ++e) order[e] = e;
    std::shuffle(order.begin(), order.end(), rng);
    float sum = 0;
    for (int j = 0; j < c.top_k; ++j) sum += combine[t * c.experts + order[j]] = uniform(rng);
    for (int j = 0; j < c.top_k; ++j) combine[t * c.experts + order[j]] /= sum;
  }
  DeviceBuffer<__nv_bfloat16> y_dev(y_host), r_dev(r_host);
  DeviceBuffer<float> w_dev(combine);
  MoeDecodeCombineParams p;
  p.y = y_dev.get();
  p.combine = w_dev.get();
  p.residual = r_dev.get();
  p.out = r_dev.get();  // in place, as the engine's residual stream
  p.tokens = c.tokens;
  p.experts = c.experts;
  p.hidden = c.hidden;
  p.alpha = 1.7f;
  p.beta = 0.9f;
  ASSERT_EQ(p.Validate(), nullptr);
  CUDA_CHECK(LaunchMoeDecodeCombine(p, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto out = r_dev.Download();

  const size_t n = static_cast<size_t>(c.tokens) * c.hidden;
  std::vector<float> ref(n), moe(n), zero(n, 0.f);
  ReferenceMoeDecodeCombine(y.data(), combine.data(), residual.data(), c.tokens, c.experts, c.hidden,
                      p.alpha, p.beta, ref.data());
  ReferenceMoeDecodeCombine(y.data(), combine.data(), zero.data(), c.tokens, c.experts, c.hidden, 0.0,
                      1.0, moe.data());
  int64_t identical = 0;
  for (size_t i = 0; i < n; ++i) {
    const double got = ToFloat(out[i]);
    // The FP32 sum can land a bf16 tie away from the double one: one ulp of the MoE value
    // (times beta) on top of the final rounding's.
    const double tol = 1.01 * Bf16Ulp(std::fabs(ref[i])) + p.beta * Bf16Ulp(std::fabs(moe[i]));
    ASSERT_LE(std::fabs(got - ref[i]), tol) << "at " << i << ": " << got << " vs " << ref[i];
    if (got == ref[i]) ++identical;
  }
  EXPECT_GE(static_cast<double>(identical), 0.99 * static_cast<double>(n));
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeDecodeCombineTest,
                         ::testing::Values(CombineCase{1, 8, 2, 1024}, CombineCase{64, 8, 2, 1024},
                                           CombineCase{256, 8, 2, 1024}, CombineCase{7, 32, 4, 1000},
                                           CombineCase{33, 3, 3, 16}, CombineCase{5, 1, 1, 8}),
                         [](const ::testing::TestParamInfo<CombineCase>& info) {
                           const CombineCase& c = info.param;
                           return "t" + std::to_string(c.tokens) + "_e" + std::to_string(c.experts) +
                                  "_k" + std::to_string(c.top_k) + "_h" + std::to_string(c.hidden);
                         });

TEST(MoeDecodeCombineValidate, RejectsBadParameters) {
  DeviceBuffer<__nv_bfloat16> buf(64);
  DeviceBuffer<float> w(8);
  MoeDecodeCombineParams p;
  p.y = buf.get();
  p.combine = w.get();
  p.residual = p.out = buf.get();
  p.tokens = 1;
  p.experts = 8;
  p.hidden = 8;
  EXPECT_EQ(p.Validate(), nullptr);
  MoeDecodeCombineParams bad = p;
  bad.experts = 0;
  EXPECT_NE(bad.Validate(), nullptr);
  EXPECT_EQ(LaunchMoeDecodeCombine(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.combine = nullptr;
  EXPECT_NE(bad.Validate(), nullptr);
  bad = p;
  bad.tokens = -1;
  EXPECT_NE(bad.Validate(), nullptr);
}

}  // namespace
}  // namespace lightrl
