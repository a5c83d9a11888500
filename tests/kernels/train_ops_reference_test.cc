// The oracles of the learner's fused kernels (kernels/train_ops/train_ops_reference.h)
// against what they stand for, computed independently by torch in double on the CPU:
// silu * b and its autograd gradient, log_softmax + gather and its autograd gradient, and
// torch's own AdamW over several steps. Fresh random inputs every run.
#include "kernels/train_ops/train_ops_reference.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <vector>

namespace lightrl {
namespace {

std::vector<float> ToVector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat32).contiguous();
  return {c.data_ptr<float>(), c.data_ptr<float>() + c.numel()};
}

torch::Tensor FromVector(const std::vector<double>& v) {
  return torch::tensor(v, torch::kFloat64);
}

double MaxRelDiff(const torch::Tensor& got, const torch::Tensor& want) {
  return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item<double>();
}

class TrainOpsReference : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    torch::manual_seed(seed_);
  }
  uint64_t seed_ = 0;
};

// The data-parallel learner's bucket fill: torch's own narrow + copy (and zero) per segment.
TEST_F(TrainOpsReference, GatherToFp32IsTorchsCopyPerSegment) {
  const std::vector<int64_t> offsets = {3, 10, 10, 40};
  const std::vector<int64_t> numels = {5, 0, 17, 9};
  const int64_t total = 52;
  auto dst = torch::randn({total}, torch::kFloat64);
  std::vector<double> got(dst.data_ptr<double>(), dst.data_ptr<double>() + total);
  std::vector<torch::Tensor> srcs;
  std::vector<std::vector<float>> values;
  std::vector<const float*> ptrs;
  for (size_t j = 0; j < offsets.size(); ++j) {
    srcs.push_back(torch::randn({numels[j]}, torch::kFloat32));
    auto v = srcs.back().contiguous();
    values.emplace_back(v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
  }
  for (size_t j = 0; j < offsets.size(); ++j) ptrs.push_back(j == 2 ? nullptr : values[j].data());
  ReferenceGatherToFp32(ptrs, offsets, numels, &got);
  for (size_t j = 0; j < offsets.size(); ++j) {
    auto slot = dst.narrow(0, offsets[j], numels[j]);
    if (j == 2) {
      slot.zero_();
    } else {
      slot.copy_(srcs[j]);
    }
  }
  EXPECT_EQ(MaxRelDiff(FromVector(got), dst), 0.0) << "seed " << seed_;
  EXPECT_EQ(got[0], dst[0].item<double>());  // untouched before the first segment
}

TEST_F(TrainOpsReference, SwiGluAndItsGradientAreTorchs) {
  const int64_t n = 4099;
  auto a = (3 * torch::randn({n}, torch::kFloat64)).to(torch::kFloat32).to(torch::kFloat64).requires_grad_();
  auto b = torch::randn({n}, torch::kFloat64).to(torch::kFloat32).to(torch::kFloat64).requires_grad_();
  auto dh = torch::randn({n}, torch::kFloat64).to(torch::kFloat32).to(torch::kFloat64);
  auto h = torch::silu(a) * b;
  h.backward(dh);
  const auto ref = ReferenceSwiGlu(ToVector(a.detach()), ToVector(b.detach()));
  EXPECT_LT(MaxRelDiff(FromVector(ref), h.detach()), 1e-12) << "seed " << seed_;
  std::vector<double> da, db;
  ReferenceSwiGluBackward(ToVector(a.detach()), ToVector(b.detach()), ToVector(dh), &da, &db);
  EXPECT_LT(MaxRelDiff(FromVector(da), a.grad()), 1e-12) << "seed " << seed_;
  EXPECT_LT(MaxRelDiff(FromVector(db), b.grad()), 1e-12) << "seed " << seed_;
}

TEST_F(TrainOpsReference, TokenLogprobAndItsGradientAreTorchs) {
  const int64_t rows = 37, vocab = 1001;
  auto logits = (4 * torch::randn({rows, vocab}, torch::kFloat64)).to(torch::kFloat32).to(torch::kFloat64);
  logits.requires_grad_();
  auto targets = torch::randint(0, vocab, {rows}, torch::kInt64);
  auto grad = torch::randn({rows}, torch::kFloat64).to(torch::kFloat32).to(torch::kFloat64);
  auto logp = torch::log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1);
  logp.backward(grad);
  const std::vector<int64_t> t(targets.data_ptr<int64_t>(), targets.data_ptr<int64_t>() + rows);
  std::vector<double> lse, ref;
  ReferenceTokenLogprob(ToVector(logits.detach()), rows, vocab, t, &lse, &ref);
  EXPECT_LT(MaxRelDiff(FromVector(ref), logp.detach()), 1e-12) << "seed " << seed_;
  EXPECT_LT(MaxRelDiff(FromVector(lse), torch::logsumexp(logits.detach(), -1)), 1e-12);
  const auto d = ReferenceTokenLogprobGrad(ToVector(logits.detach()), rows, vocab, t, ToVector(grad));
  EXPECT_LT(MaxRelDiff(FromVector(d).view({rows, vocab}), logits.grad()), 1e-12) << "seed " << seed_;

  // A target out of range has no log-probability.
  std::vector<int64_t> bad = t;
  bad[3] = vocab;
  ReferenceTokenLogprob(ToVector(logits.detach()), rows, vocab, bad, &lse, &ref);
  EXPECT_TRUE(std::isnan(ref[3]));
  EXPECT_FALSE(std::isnan(ref[4]));
}

TEST_F(TrainOpsReference, MoeCombineAndItsGradientAreTorchs) {
  const int64_t tokens = 50, top_k = 2, dim = 24, num_rows = tokens * top_k + 7;
  // Each assignment reads its own row, in a shuffled order; 7 rows are padding.
  auto perm = torch::randperm(num_rows, torch::kInt64);
  auto rows = perm.narrow(0, 0, tokens * top_k).clone();
  auto readers = torch::full({num_rows}, tokens * top_k, torch::kInt64);
  readers.index_copy_(0, rows, torch::arange(tokens * top_k, torch::kInt64));
  auto y = torch::randn({num_rows, dim}, torch::kFloat64).to(torch::kFloat32).to(torch::kFloat64).requires_grad_();
  auto w = torch::rand({tokens, top_k}, torch::kFloat64).to(torch::kFloat32).to(torch::kFloat64).requires_grad_();
  auto g = torch::randn({tokens, dim}, torch::kFloat64).to(torch::kFloat32).to(torch::kFloat64);
  auto out = (y.index_select(0, rows).view({tokens, top_k, dim}) * w.unsqueeze(-1)).sum(1);
  out.backward(g);
  const std::vector<int64_t> r(rows.data_ptr<int64_t>(), rows.data_ptr<int64_t>() + rows.numel());
  const std::vector<int64_t> rd(readers.data_ptr<int64_t>(), readers.data_ptr<int64_t>() + num_rows);
  const auto ref = ReferenceMoeCombine(ToVector(y.detach()), dim, r, ToVector(w.detach()), top_k);
  EXPECT_LT(MaxRelDiff(FromVector(ref).view({tokens, dim}), out.detach()), 1e-12) << "seed " << seed_;
  std::vector<double> dy, dw;
  ReferenceMoeCombineBackward(ToVector(y.detach()), dim, r, rd, ToVector(w.detach()), top_k,
                              ToVector(g), &dy, &dw);
  EXPECT_LT(MaxRelDiff(FromVector(dy).view({num_rows, dim}), y.grad()), 1e-12) << "seed " << seed_;
  EXPECT_LT(MaxRelDiff(FromVector(dw).view({tokens, top_k}), w.grad()), 1e-12) << "seed " << seed_;
}

TEST_F(TrainOpsReference, AdamWFollowsTorchsAdamWOverSteps) {
  const int64_t n = 513;
  ReferenceAdamWOptions o;
  o.lr = 3e-3;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.weight_decay = 0.1;
  o.eps = 1e-8;
  auto w = torch::randn({n}, torch::kFloat64).requires_grad_();
  torch::optim::AdamW adamw({w}, torch::optim::AdamWOptions(o.lr)
                                     .betas({o.beta1, o.beta2})
                                     .eps(o.eps)
                                     .weight_decay(o.weight_decay));
  std::vector<double> master(w.data_ptr<double>(), w.data_ptr<double>() + n), m(n, 0.0), v(n, 0.0);
  for (int64_t step = 1; step <= 4; ++step) {
    const double scale = step == 2 ? 0.25 : 1.0;  // a clipped update
    auto g = torch::randn({n}, torch::kFloat64).to(torch::kFloat32);
    w.mutable_grad() = g.to(torch::kFloat64) * scale;
    adamw.step();
    ReferenceAdamW(&master, &m, &v, ToVector(g), step, scale, o);
    EXPECT_LT(MaxRelDiff(FromVector(master), w.detach()), 1e-12) << "step " << step << " seed " << seed_;
  }
}

}  // namespace
}  // namespace lightrl
