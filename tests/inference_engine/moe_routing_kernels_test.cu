// GPU tests of the MoE routing kernel against the double oracle: fresh random logits every
// run (seed printed on failure), expert counts up to 256, top-k up to 8, padded rows, ties,
// and the dense combine rows.
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "inference_engine/cuda/moe_routing.h"
#include "inference_engine/reference/moe_routing_reference.h"
#include "tests/inference_engine/cuda_test_util.h"

namespace lightrl {
namespace {

using Case = std::tuple<int, int, int>;  // tokens, experts, top_k

class MoeRoutingKernel : public ::testing::TestWithParam<Case> {};

void CheckRouting(const std::vector<float>& logits, int tokens, int experts, int top_k,
                  int64_t stride, unsigned seed) {
  std::vector<float> padded(static_cast<size_t>(tokens) * stride, NAN), dense(static_cast<size_t>(tokens) * experts);
  for (int t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) padded[t * stride + e] = dense[t * experts + e] = logits[t * experts + e];
  }
  DeviceBuffer<float> logits_d(padded), weights_d(static_cast<size_t>(tokens) * top_k),
      combine_d(static_cast<size_t>(tokens) * experts);
  DeviceBuffer<int64_t> ids_d(static_cast<size_t>(tokens) * top_k);
  MoeRoutingParams p;
  p.logits = logits_d.get();
  p.ids = ids_d.get();
  p.weights = weights_d.get();
  p.combine = combine_d.get();
  p.logits_row_stride = stride;
  p.tokens = tokens;
  p.experts = experts;
  p.top_k = top_k;
  ASSERT_EQ(LaunchMoeRouting(p, nullptr), cudaSuccess);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<int64_t> ids;
  std::vector<double> weights;
  ReferenceMoeRouting(dense, tokens, experts, top_k, &ids, &weights);
  const auto got_ids = ids_d.Download();
  const auto got_w = weights_d.Download(), got_c = combine_d.Download();
  for (int t = 0; t < tokens; ++t) {
    double row_sum = 0;
    for (int j = 0; j < top_k; ++j) {
      const int a = t * top_k + j;
      ASSERT_EQ(got_ids[a], ids[a]) << "token " << t << " slot " << j << " seed " << seed;
      ASSERT_NEAR(got_w[a], weights[a], 1e-5 * weights[a] + 1e-7) << "token " << t << " seed " << seed;
    }
    for (int e = 0; e < experts; ++e) {
      double want = 0;
      for (int j = 0; j < top_k; ++j) {
        if (ids[t * top_k + j] == e) want = weights[t * top_k + j];
      }
      ASSERT_NEAR(got_c[t * experts + e], want, 1e-5 * want + 1e-7) << "combine " << t << ", " << e;
      row_sum += got_c[t * experts + e];
    }
    ASSERT_NEAR(row_sum, 1.0, 1e-5);
  }
}

TEST_P(MoeRoutingKernel, MatchesTheReference) {
  const auto [tokens, experts, top_k] = GetParam();
  const unsigned seed = FreshSeed();
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> logits(static_cast<size_t>(tokens) * experts);
  for (auto& v : logits) v = normal(rng);
  CheckRouting(logits, tokens, experts, top_k, experts, seed);
  CheckRouting(logits, tokens, experts, top_k, experts + 5, seed);  // padded rows
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeRoutingKernel,
                         ::testing::Values(Case{1, 8, 2}, Case{7, 8, 1}, Case{256, 32, 8},
                                           Case{4099, 8, 2}, Case{33, 256, 8}, Case{5, 3, 3},
                                           Case{64, 200, 4}));

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
  CUDA_CHECK(cudaFree(any));
}

}  // namespace
}  // namespace lightrl
