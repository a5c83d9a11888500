// GPU tests of the MoE routing kernel against the double oracle: fresh random logits every
// run (seed printed on failure) over tokens 1 .. 4099, experts 8 .. 256 and top-k 1 .. 8,
// ragged expert counts, padded rows, ties, and the dense combine rows.
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/moe/moe_routing.h"
#include "kernels/moe/moe_routing_reference.h"
#include "tests/kernels/cuda_test_util.h"

namespace lightrl {
namespace {

using Case = std::tuple<int, int, int>;  // tokens, experts, top_k

// Roughly normal logits (std 3) on a grid of 1/1024, distinct within each row: any two are
// far enough apart that FP32 and double rank them alike, so the ids must match exactly.
std::vector<float> DistinctLogits(std::mt19937& rng, int tokens, int experts) {
  std::normal_distribution<double> normal(0.0, 3.0 * 1024);
  std::vector<float> logits(static_cast<size_t>(tokens) * experts);
  for (int t = 0; t < tokens; ++t) {
    std::set<double> seen;
    for (int e = 0; e < experts; ++e) {
      double v = std::round(normal(rng));
      while (!seen.insert(v).second) v = std::round(normal(rng));
      logits[static_cast<size_t>(t) * experts + e] = static_cast<float>(v / 1024);
    }
  }
  return logits;
}

// Runs the kernel on `logits` laid out with row stride `stride` (the padding holds NaN,
// which it must not read) into outputs poisoned beforehand (which it must all write), and
// compares with the oracle: ids exactly, weights and combine rows to 1e-5 relative.
void CheckRouting(const std::vector<float>& logits, int tokens, int experts, int top_k,
                  int64_t stride, unsigned seed) {
  const size_t n_top = static_cast<size_t>(tokens) * top_k;
  const size_t n_dense = static_cast<size_t>(tokens) * experts;
  std::vector<float> padded(static_cast<size_t>(tokens) * stride, NAN);
  for (int t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) padded[t * stride + e] = logits[static_cast<size_t>(t) * experts + e];
  }
  DeviceBuffer<float> logits_d(padded), weights_d(std::vector<float>(n_top, NAN)),
      combine_d(std::vector<float>(n_dense, NAN));
  DeviceBuffer<int64_t> ids_d(std::vector<int64_t>(n_top, -1));
  MoeRoutingParams p;
  p.logits = logits_d.get();
  p.ids = ids_d.get();
  p.weights = weights_d.get();
  p.combine = combine_d.get();
  p.logits_row_stride = stride;
  p.tokens = tokens;
  p.experts = experts;
  p.top_k = top_k;
  ASSERT_EQ(p.Validate(), nullptr);
  ASSERT_EQ(LaunchMoeRouting(p, nullptr), cudaSuccess);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<int64_t> ids;
  std::vector<double> weights;
  ReferenceMoeRouting(logits, tokens, experts, top_k, &ids, &weights);
  const auto got_ids = ids_d.Download();
  const auto got_w = weights_d.Download(), got_c = combine_d.Download();
  for (int t = 0; t < tokens; ++t) {
    double row_sum = 0;
    for (int j = 0; j < top_k; ++j) {
      const size_t a = static_cast<size_t>(t) * top_k + j;
      ASSERT_EQ(got_ids[a], ids[a]) << "token " << t << " slot " << j << " seed " << seed;
      ASSERT_NEAR(got_w[a], weights[a], 1e-5 * weights[a]) << "token " << t << " seed " << seed;
    }
    for (int e = 0; e < experts; ++e) {
      double want = 0;
      for (int j = 0; j < top_k; ++j) {
        if (ids[static_cast<size_t>(t) * top_k + j] == e) want = weights[static_cast<size_t>(t) * top_k + j];
      }
      const float got = got_c[static_cast<size_t>(t) * experts + e];
      ASSERT_NEAR(got, want, 1e-5 * want) << "combine " << t << ", " << e << " seed " << seed;
      row_sum += got;
    }
    ASSERT_NEAR(row_sum, 1.0, 1e-5) << "token " << t << " seed " << seed;
  }
}

class MoeRoutingKernel : public ::testing::TestWithParam<Case> {};

TEST_P(MoeRoutingKernel, MatchesTheReference) {
  const auto [tokens, experts, top_k] = GetParam();
  const unsigned seed = FreshSeed();
  std::mt19937 rng(seed);
  const auto logits = DistinctLogits(rng, tokens, experts);
  CheckRouting(logits, tokens, experts, top_k, experts, seed);
  CheckRouting(logits, tokens, experts, top_k, experts + 5, seed);  // padded rows
}

// M1 routes 32 experts top-2, the bench model 8; 256 and top-8 are the kernel's limits.
INSTANTIATE_TEST_SUITE_P(Grid, MoeRoutingKernel,
                         ::testing::Combine(::testing::Values(1, 7, 256, 4099),
                                            ::testing::Values(8, 32, 256),
                                            ::testing::Values(1, 2, 8)));
// Expert counts that are not multiples of the warp, and top_k == experts.
INSTANTIATE_TEST_SUITE_P(Ragged, MoeRoutingKernel,
                         ::testing::Values(Case{1, 1, 1}, Case{5, 3, 3}, Case{33, 33, 5},
                                           Case{64, 200, 4}, Case{3, 8, 8}));

TEST(MoeRoutingKernelTies, GoToTheLowerExpertAndBadParametersAreRefused) {
  // Equal logits give bit-equal probabilities: the lower expert is chosen first.
  std::vector<float> logits = {1.f, 2.f, 2.f, 0.f, 2.f, -1.f, 2.f, 2.f};
  CheckRouting(logits, 1, 8, 3, 8, 0);
  MoeRoutingParams bad;
  bad.tokens = 1;
  bad.experts = 8;
  bad.top_k = 9;
  bad.logits_row_stride = 8;
  float* any = nullptr;
  CUDA_CHECK(cudaMalloc(&any, 64));
  bad.logits = any;
  bad.combine = any;
  EXPECT_EQ(LaunchMoeRouting(bad, nullptr), cudaErrorInvalidValue);
  bad.top_k = 2;
  bad.experts = 257;
  EXPECT_NE(bad.Validate(), nullptr);
  bad.experts = 8;
  bad.logits_row_stride = 7;
  EXPECT_NE(bad.Validate(), nullptr);
  bad.logits_row_stride = 8;
  bad.combine = nullptr;
  EXPECT_NE(bad.Validate(), nullptr);  // no output asked for
  CUDA_CHECK(cudaFree(any));
}

}  // namespace
}  // namespace lightrl
