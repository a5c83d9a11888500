#include "policy/lightning_attention.h"

#include <gtest/gtest.h>

namespace lightrl {
namespace {

double RelErr(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.to(torch::kFloat64) - b.to(torch::kFloat64)).norm() /
          b.to(torch::kFloat64).norm().clamp_min(1e-30))
      .item<double>();
}

torch::Tensor RandomSlope(int64_t heads) {
  // MiniMax's slopes span about 2^-8 .. 0.5; draw across that range.
  return torch::exp2(-8 * torch::rand({heads}, torch::kFloat64));
}

struct Shape {
  int64_t batch, heads, len, dim, block;
};

class LightningShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(LightningShapes, ChunkedMatchesRecurrence) {
  const Shape s = GetParam();
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto q = torch::randn({s.batch, s.heads, s.len, s.dim}, opts);
  auto k = torch::randn({s.batch, s.heads, s.len, s.dim}, opts);
  auto v = torch::randn({s.batch, s.heads, s.len, s.dim}, opts);
  auto slope = RandomSlope(s.heads);
  auto state0 = torch::randn({s.batch, s.heads, s.dim, s.dim}, torch::kFloat32);
  auto [o_ref, s_ref] = LightningRecurrent(q, k, v, slope, state0);
  auto [o, st] = LightningChunked(q, k, v, slope, s.block, state0);
  EXPECT_LT(RelErr(o, o_ref), 1e-5);
  EXPECT_LT(RelErr(st, s_ref), 1e-5);
}

TEST_P(LightningShapes, TrainingBackwardMatchesAutogradThroughRecurrence) {
  const Shape s = GetParam();
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto q = torch::randn({s.batch, s.heads, s.len, s.dim}, opts).requires_grad_();
  auto k = torch::randn({s.batch, s.heads, s.len, s.dim}, opts).requires_grad_();
  auto v = torch::randn({s.batch, s.heads, s.len, s.dim}, opts).requires_grad_();
  auto slope = RandomSlope(s.heads);
  auto d_o = torch::randn({s.batch, s.heads, s.len, s.dim}, opts);

  auto o_ref = LightningRecurrent(q, k, v, slope).first;
  auto grads_ref = torch::autograd::grad({o_ref}, {q, k, v}, {d_o});
  auto o = LightningAttentionTrain(q, k, v, slope, s.block);
  EXPECT_LT(RelErr(o, o_ref), 1e-5);
  auto grads = torch::autograd::grad({o}, {q, k, v}, {d_o});
  for (int i = 0; i < 3; ++i) EXPECT_LT(RelErr(grads[i], grads_ref[i]), 1e-5) << "input " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, LightningShapes,
                         ::testing::Values(Shape{1, 2, 1, 4, 4}, Shape{2, 3, 17, 8, 4},
                                           Shape{1, 4, 64, 16, 16}, Shape{2, 2, 50, 8, 7},
                                           Shape{1, 1, 33, 32, 64}, Shape{3, 2, 9, 8, 1}));

TEST(LightningAttentionTest, ContinuingFromAStateEqualsOneLongPass) {
  auto q = torch::randn({2, 3, 40, 8}), k = torch::randn({2, 3, 40, 8}), v = torch::randn({2, 3, 40, 8});
  auto slope = RandomSlope(3).to(torch::kFloat32);
  auto [o_full, s_full] = LightningChunked(q, k, v, slope, 16);
  auto [o1, s1] = LightningChunked(q.narrow(2, 0, 23), k.narrow(2, 0, 23), v.narrow(2, 0, 23), slope, 16);
  auto [o2, s2] = LightningChunked(q.narrow(2, 23, 17), k.narrow(2, 23, 17), v.narrow(2, 23, 17), slope, 16, s1);
  EXPECT_LT(RelErr(torch::cat({o1, o2}, 2), o_full), 1e-5);
  EXPECT_LT(RelErr(s2, s_full), 1e-5);
}

}  // namespace
}  // namespace lightrl
