// VocabParallelTokenLogprobs on a TP group of one rank (the whole vocabulary here): equal to
// the LM head's log-softmax and its gradients, and bad inputs named. The multi-rank
// cases run as processes (tests/python/vocab_parallel_test.py).
#include "policy/vocab_parallel.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace lightrl {
namespace {

// A TP group of this rank alone: the all-reduces leave their input as it is.
class SingleRankComm final : public TensorParallelComm {
 public:
  int64_t tp_size() const override { return 1; }
  int64_t tp_rank() const override { return 0; }
  void AllReduce(torch::Tensor&, Op) override {}
};

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.msg();
  }
  return "";
}

TEST(VocabParallelTest, OneRankIsTheLmHead) {
  torch::manual_seed(7);
  SingleRankComm comm;
  const auto w0 = torch::randn({50, 16}) * 0.5;
  const auto h0 = torch::randn({9, 16});
  const auto targets = torch::randint(0, 50, {9}, torch::kInt64);
  const auto up = torch::randn({9});
  for (double t : {1.0, 0.5}) {
    auto h = h0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true);
    auto logp = VocabParallelTokenLogprobs(h, w, targets, t, comm);
    (logp * up).sum().backward();
    auto hr = h0.clone().requires_grad_(true), wr = w0.clone().requires_grad_(true);
    auto ref = torch::log_softmax(torch::matmul(hr, wr.t()) / t, -1)
                   .gather(1, targets.unsqueeze(1))
                   .squeeze(1);
    (ref * up).sum().backward();
    EXPECT_LT((logp - ref).abs().max().item<double>(), 1e-5) << t;
    EXPECT_LT((h.grad() - hr.grad()).abs().max().item<double>(), 1e-5) << t;
    EXPECT_LT((w.grad() - wr.grad()).abs().max().item<double>(), 1e-5) << t;
    EXPECT_GT(wr.grad().abs().max().item<double>(), 1e-3);
  }
}

TEST(VocabParallelTest, BadInputsAreNamed) {
  SingleRankComm comm;
  const auto w = torch::randn({8, 4});
  const auto h = torch::randn({3, 4});
  const auto ok = torch::tensor({0, 7, 3}, torch::kInt64);
  EXPECT_NE(ErrorOf([&] { VocabParallelTokenLogprobs(h, w, ok, 0.0, comm); })
                .find("temperature must be finite and > 0, got 0"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { VocabParallelTokenLogprobs(torch::randn({3, 5}), w, ok, 1.0, comm); })
                .find("must be [N, H] and [vocab / tp, H]"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] {
              VocabParallelTokenLogprobs(h, w, torch::tensor({0, 8, 1}, torch::kInt64), 1.0,
                                         comm);
            }).find("targets must be in [0, 8), got [0, 8]"),
            std::string::npos);
  EXPECT_NE(ErrorOf([&] { VocabParallelTokenLogprobs(h, w, ok.to(torch::kInt32), 1.0, comm); })
                .find("targets must be [3] int64"),
            std::string::npos);
}

}  // namespace
}  // namespace lightrl
