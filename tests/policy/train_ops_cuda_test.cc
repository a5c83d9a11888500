// The learner's fused GPU ops as torch ops (policy/train_ops_cuda.h) against the same math
// in FP64 (values and autograd gradients) and against torch's own fused AdamW, on fresh
// random inputs.
#include "policy/train_ops_cuda.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace lightrl {
namespace {

double RelErr(const torch::Tensor& a, const torch::Tensor& b) {
  auto x = a.to(torch::kCPU, torch::kFloat64), y = b.to(torch::kCPU, torch::kFloat64);
  return ((x - y).norm() / y.norm().clamp_min(1e-300)).item<double>();
}

class TrainOpsCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    seed_ = std::random_device{}();
    torch::manual_seed(seed_);
  }
  torch::Device dev_{torch::kCUDA};
  uint64_t seed_ = 0;
};

TEST_F(TrainOpsCuda, SwiGluMatchesFp64ValuesAndGradients) {
  auto a = (2 * torch::randn({333, 257})).to(dev_, torch::kBFloat16).requires_grad_();
  auto b = torch::randn({333, 257}).to(dev_, torch::kBFloat16).requires_grad_();
  auto dh = torch::randn({333, 257}).to(dev_, torch::kBFloat16);
  ASSERT_TRUE(TrainKernelsSupported(a));
  auto h = SwiGluCuda(a, b);
  h.backward(dh);
  auto a64 = a.detach().to(torch::kFloat64).requires_grad_();
  auto b64 = b.detach().to(torch::kFloat64).requires_grad_();
  auto h64 = torch::silu(a64) * b64;
  h64.backward(dh.to(torch::kFloat64));
  EXPECT_EQ(h.scalar_type(), torch::kBFloat16);
  EXPECT_LT(RelErr(h, h64), 1e-2) << "seed " << seed_;
  EXPECT_LT(RelErr(a.grad(), a64.grad()), 1e-2) << "seed " << seed_;
  EXPECT_LT(RelErr(b.grad(), b64.grad()), 1e-2) << "seed " << seed_;
}

TEST_F(TrainOpsCuda, TokenLogprobsMatchFp64ValuesAndGradients) {
  const int64_t n = 300, H = 64, V = 1000;
  auto x = torch::randn({n, H}).to(dev_, torch::kBFloat16).requires_grad_();
  auto w = (0.2 * torch::randn({V, H})).to(dev_, torch::kBFloat16).requires_grad_();
  auto targets = torch::randint(0, V, {n}, torch::kInt64).to(dev_);
  auto g = torch::randn({n}).to(dev_);
  auto logp = TokenLogprobsCuda(x, w, targets);
  logp.backward(g);
  auto x64 = x.detach().to(torch::kFloat64).requires_grad_();
  auto w64 = w.detach().to(torch::kFloat64).requires_grad_();
  auto ref = torch::log_softmax(x64.mm(w64.t()), -1).gather(1, targets.unsqueeze(1)).squeeze(1);
  ref.backward(g.to(torch::kFloat64));
  EXPECT_EQ(logp.scalar_type(), torch::kFloat32);
  // FP32 logits of exact bf16 products: only summation order and the FP32 exp differ.
  EXPECT_LT((logp.to(torch::kFloat64) - ref).abs().max().item<double>(), 1e-3) << "seed " << seed_;
  // The logits' gradient is rounded to bf16 before the two GEMMs.
  EXPECT_LT(RelErr(x.grad(), x64.grad()), 1e-2) << "seed " << seed_;
  EXPECT_LT(RelErr(w.grad(), w64.grad()), 1e-2) << "seed " << seed_;

  // With no gradient wanted it is the same forward.
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(TokenLogprobsCuda(x.detach(), w.detach(), targets), logp.detach()));
}

TEST_F(TrainOpsCuda, MasterAdamWMatchesTorchsFusedAdamW) {
  ASSERT_TRUE(MasterAdamWSupported(dev_));
  const std::vector<int64_t> sizes = {5, 100003, 4096};
  MasterAdamWHyper hyper{1e-3, 0.9, 0.95, 0.1, 1e-8};
  std::vector<torch::Tensor> ours, theirs, m1, v1, m2, v2, outs;
  for (int64_t n : sizes) {
    auto w = torch::randn({n}, torch::TensorOptions().device(dev_));
    ours.push_back(w.clone());
    theirs.push_back(w.clone());
    for (auto* list : {&m1, &v1, &m2, &v2}) list->push_back(torch::zeros_like(w));
    outs.push_back(torch::empty({n}, w.options().dtype(torch::kBFloat16)));
  }
  for (int64_t step = 1; step <= 3; ++step) {
    auto scale = torch::full({}, step == 2 ? 0.4f : 1.0f, torch::TensorOptions().device(dev_));
    std::vector<MasterAdamWEntry> entries;
    std::vector<torch::Tensor> grads, scaled, steps;
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto gb = (1e-2 * torch::randn({sizes[i]})).to(dev_, torch::kBFloat16);
      // bf16 gradients for the first tensors, FP32 for the last.
      auto g = i + 1 < sizes.size() ? gb : gb.to(torch::kFloat32);
      entries.push_back({ours[i], m1[i], v1[i], g, outs[i], step});
      scaled.push_back(gb.to(torch::kFloat32) * scale);
      steps.push_back(torch::full({}, static_cast<float>(step), torch::TensorOptions().device(dev_)));
    }
    MasterAdamWCuda(entries, scale, hyper);
    at::_fused_adamw_(theirs, scaled, m2, v2, {}, steps, hyper.lr, hyper.beta1, hyper.beta2,
                      hyper.weight_decay, hyper.eps, false, false);
    for (size_t i = 0; i < sizes.size(); ++i) {
      EXPECT_LT((ours[i] - theirs[i]).abs().max().item<double>(), 1e-6) << "step " << step << " tensor " << i;
      EXPECT_LT(RelErr(v1[i], v2[i]), 1e-6) << "step " << step << " tensor " << i;
      EXPECT_TRUE(torch::equal(outs[i], ours[i].to(torch::kBFloat16))) << "tensor " << i;
    }
  }
}

}  // namespace
}  // namespace lightrl
