// The policy's GPU lightning attention (policy/lightning_cuda.h) against the FP64
// recurrence on the same bf16 inputs: packed ragged documents, forward and backward.
#include "policy/lightning_cuda.h"

#include <gtest/gtest.h>

#include <vector>

#include "policy/lightning_attention.h"

namespace lightrl {
namespace {

double RelErr(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.to(torch::kCPU, torch::kFloat64) - b.to(torch::kCPU, torch::kFloat64)).norm() /
          b.to(torch::kCPU, torch::kFloat64).norm().clamp_min(1e-30))
      .item<double>();
}

struct Case {
  std::vector<int64_t> lengths;
  int64_t heads, dim;
};

class LightningCuda : public ::testing::TestWithParam<Case> {};

TEST_P(LightningCuda, PackedForwardAndBackwardMatchTheRecurrence) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const Case c = GetParam();
  std::vector<int64_t> cu = {0};
  for (int64_t len : c.lengths) cu.push_back(cu.back() + len);
  const int64_t T = cu.back(), H = c.heads, d = c.dim;
  auto dev = torch::Device(torch::kCUDA);
  ASSERT_TRUE(LightningCudaSupported(dev, torch::kBFloat16, d));
  // MiniMax's slopes span about 2^-8 .. 0.5.
  auto slope = torch::exp2(-8 * torch::rand({H}, torch::kFloat32));
  auto qkv = (0.5 * torch::randn({T, H, 3 * d})).to(dev, torch::kBFloat16).requires_grad_();
  auto d_o = torch::randn({T, H, d}).to(dev, torch::kBFloat16);

  auto o = LightningPackedCuda(qkv, cu, slope.to(dev));
  ASSERT_EQ(o.sizes(), (std::vector<int64_t>{T, H, d}));
  auto d_qkv = torch::autograd::grad({o}, {qkv}, {d_o})[0];

  // Reference: each document alone, FP64, autograd through the recurrence.
  auto qkv64 = qkv.detach().to(torch::kCPU, torch::kFloat64);
  auto d_o64 = d_o.to(torch::kCPU, torch::kFloat64);
  for (size_t n = 0; n + 1 < cu.size(); ++n) {
    const int64_t start = cu[n], len = cu[n + 1] - cu[n];
    auto doc = qkv64.narrow(0, start, len).permute({1, 0, 2}).unsqueeze(0);  // [1, H, L, 3d]
    auto q = doc.narrow(3, 0, d).contiguous().requires_grad_();
    auto k = doc.narrow(3, d, d).contiguous().requires_grad_();
    auto v = doc.narrow(3, 2 * d, d).contiguous().requires_grad_();
    auto o_ref = LightningRecurrent(q, k, v, slope.to(torch::kFloat64)).first;
    auto g = d_o64.narrow(0, start, len).permute({1, 0, 2}).unsqueeze(0);
    auto grads = torch::autograd::grad({o_ref}, {q, k, v}, {g});
    auto to_packed = [](const torch::Tensor& t) { return t.squeeze(0).permute({1, 0, 2}); };
    EXPECT_LT(RelErr(o.narrow(0, start, len), to_packed(o_ref)), 1e-2) << "document " << n;
    for (int i = 0; i < 3; ++i) {
      EXPECT_LT(RelErr(d_qkv.narrow(0, start, len).narrow(2, i * d, d), to_packed(grads[i])),
                1e-2)
          << "document " << n << " gradient of " << "qkv"[i];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, LightningCuda,
                         ::testing::Values(Case{{1, 37, 64, 200, 129}, 4, 64},
                                           Case{{300}, 2, 128},
                                           Case{{65, 1, 31, 130}, 3, 128}));

TEST(LightningCuda, RejectsAPackingThatDoesNotCoverTheBatch) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto qkv = torch::zeros({10, 2, 3 * 64}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kBFloat16));
  EXPECT_THROW(LightningPackedCuda(qkv, {0, 4, 9}, torch::ones({2}, torch::kCUDA)), c10::Error);
}

}  // namespace
}  // namespace lightrl
