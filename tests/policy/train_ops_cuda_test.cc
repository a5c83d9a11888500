// The learner's fused GPU ops as torch ops (policy/train_ops_cuda.h) against the same math
// in FP64 (values and autograd gradients) and against torch's own fused AdamW, on fresh
// random inputs.
#include "policy/train_ops_cuda.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "policy/minimax_model.h"
#include "tests/test_models.h"

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

// The learner's bucket fill: bf16 gradients (one a strided slice made contiguous, one
// undefined) into an FP32 range, against torch's copies, on a side stream.
TEST_F(TrainOpsCuda, GatherToFp32EqualsTorchsCopies) {
  auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  std::vector<torch::Tensor> srcs = {torch::randn({3, 5}, bf16), torch::Tensor(),
                                     torch::randn({70001}, bf16),
                                     torch::randn({64, 9}, bf16).narrow(1, 1, 7).contiguous()};
  std::vector<int64_t> offsets, numels;
  int64_t at = 1;
  for (size_t j = 0; j < srcs.size(); ++j) {
    const int64_t n = srcs[j].defined() ? srcs[j].numel() : 11;
    offsets.push_back(at);
    numels.push_back(n);
    at += n + 2;
  }
  auto dst = torch::full({at}, -7.f, torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCUDA));
  auto want = dst.clone();
  for (size_t j = 0; j < srcs.size(); ++j) {
    auto slot = want.narrow(0, offsets[j], numels[j]);
    if (srcs[j].defined()) {
      slot.copy_(srcs[j].reshape({-1}));
    } else {
      slot.zero_();
    }
  }
  SideStream side(dst.device());
  side.Run([&] { GatherToFp32Cuda(srcs, offsets, numels, dst); });
  // The current stream's work after this point is not ordered after the side stream's:
  // synchronize the device before reading.
  torch::cuda::synchronize();
  EXPECT_TRUE(torch::equal(dst, want));
  EXPECT_THROW(GatherToFp32Cuda(srcs, offsets, {1, 2, 3, 4}, dst), c10::Error);
  EXPECT_THROW(GatherToFp32Cuda({torch::randn({4}, bf16)}, {at - 2}, {4}, dst), c10::Error);
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

// The sparse MoE on the GPU runs its experts as grouped GEMMs; in chunks small enough for
// the dense path, every expert runs on every token. Both must give the same output and
// gradients (bf16 rounding apart), including an expert no token reaches.
TEST_F(TrainOpsCuda, GroupedExpertsMatchTheDensePath) {
  ModelConfig c = SmallGpuConfig();
  c.num_local_experts = 5;
  SparseMoe moe(c);
  moe->to(dev_, torch::kBFloat16);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : moe->parameters()) p.normal_(0, 0.05);
    // Expert 4 is never chosen: its router row is very negative against positive inputs.
    moe->gate->weight[4].fill_(-10);
  }
  const int64_t T = 700, chunk = 100;  // 1400 assignments: sparse; 200 a chunk: dense
  auto x = torch::rand({T, c.hidden_size}).to(dev_, torch::kBFloat16);
  auto r = torch::randn({T, c.hidden_size}).to(dev_, torch::kBFloat16);
  ASSERT_TRUE(moe->GroupedExpertsSupported(x));
  auto run = [&](bool sparse) {
    moe->zero_grad();
    auto xi = x.clone().requires_grad_();
    torch::Tensor out;
    if (sparse) {
      out = moe->forward(xi, 0).first;
    } else {
      std::vector<torch::Tensor> parts;
      for (int64_t start = 0; start < T; start += chunk) parts.push_back(moe->forward(xi.narrow(0, start, chunk), 0).first);
      out = torch::cat(parts);
    }
    (out.to(torch::kFloat32) * r.to(torch::kFloat32)).sum().backward();
    std::vector<torch::Tensor> g{out.detach(), xi.grad().clone()};
    for (auto& p : moe->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    return g;
  };
  auto gs = run(true), gd = run(false);
  ASSERT_EQ(gs.size(), gd.size());
  const auto params = moe->named_parameters();
  for (size_t i = 0; i < gs.size(); ++i) {
    const std::string name = i < 2 ? (i == 0 ? "output" : "x grad") : params[i - 2].key();
    if (name.find("experts.4.") != std::string::npos) {
      // The sparse path leaves the unused expert without a gradient; the dense one gives zeros.
      EXPECT_FALSE(gs[i].defined()) << name;
      continue;
    }
    ASSERT_TRUE(gd[i].defined()) << name;
    if (!gs[i].defined()) {
      // The router sent this expert no token of the batch (with these random weights the
      // inputs often share their favourite experts): the sparse path gives it no gradient,
      // and the dense path, which routes the same way, must give it zeros.
      EXPECT_EQ(gd[i].abs().max().item<float>(), 0.0f) << name << " seed " << seed_;
      continue;
    }
    EXPECT_LT(RelErr(gs[i], gd[i]), 2e-2) << name << " seed " << seed_;
  }
}

}  // namespace
}  // namespace lightrl
