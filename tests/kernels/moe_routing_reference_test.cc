// The routing oracle (kernels/moe/moe_routing_reference.h) against the
// policy's routing rule computed by torch in double: softmax, topk, renormalise. Fresh
// random logits every run.
#include "kernels/moe/moe_routing_reference.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <vector>

namespace lightrl {
namespace {

TEST(MoeRoutingReference, MatchesSoftmaxTopkRenormalise) {
  const uint64_t seed = std::random_device{}();
  torch::manual_seed(seed);
  for (auto [tokens, experts, top_k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 8, 2}, {57, 32, 8}, {9, 256, 1}, {13, 3, 3}}) {
    auto logits = (3 * torch::randn({tokens, experts})).to(torch::kFloat32);
    std::vector<float> flat(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
    std::vector<int64_t> ids;
    std::vector<double> weights;
    ReferenceMoeRouting(flat, tokens, experts, top_k, &ids, &weights);
    auto probs = torch::softmax(logits.to(torch::kFloat64), -1);
    auto [top_w, top_i] = probs.topk(top_k, -1);
    top_w = top_w / top_w.sum(-1, true);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < top_k; ++j) {
        ASSERT_EQ(ids[t * top_k + j], top_i[t][j].item<int64_t>()) << "token " << t << " seed " << seed;
        ASSERT_NEAR(weights[t * top_k + j], top_w[t][j].item<double>(), 1e-12) << "token " << t;
      }
    }
  }
}

TEST(MoeRoutingReference, HandCheckedRows) {
  // exp(logits) in ratio 1 : 2 : 3 : 0.5, shifted per row (softmax ignores the shift):
  // top-2 are experts 2 and 1 with weights 3/5 and 2/5 (up to the FP32 rounding of the
  // logits); top-1 is expert 2 with weight 1.
  std::vector<float> logits;
  for (float shift : {0.f, 40.f}) {
    for (double r : {1.0, 2.0, 3.0, 0.5}) logits.push_back(static_cast<float>(std::log(r)) + shift);
  }
  std::vector<int64_t> ids;
  std::vector<double> weights;
  ReferenceMoeRouting(logits, 2, 4, 2, &ids, &weights);
  EXPECT_EQ(ids, (std::vector<int64_t>{2, 1, 2, 1}));
  for (int t = 0; t < 2; ++t) {
    EXPECT_NEAR(weights[2 * t], 0.6, 1e-5);
    EXPECT_NEAR(weights[2 * t + 1], 0.4, 1e-5);
  }
  ReferenceMoeRouting(logits, 2, 4, 1, &ids, &weights);
  EXPECT_EQ(ids, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(weights, (std::vector<double>{1.0, 1.0}));
}

TEST(MoeRoutingReference, TiesGoToTheLowerExpert) {
  std::vector<float> logits = {1.f, 2.f, 2.f, 0.f, 2.f};
  std::vector<int64_t> ids;
  std::vector<double> weights;
  ReferenceMoeRouting(logits, 1, 5, 2, &ids, &weights);
  EXPECT_EQ(ids, (std::vector<int64_t>{1, 2}));
  EXPECT_DOUBLE_EQ(weights[0], 0.5);
}

}  // namespace
}  // namespace lightrl
