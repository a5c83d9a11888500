// The batch-invariant numerics mode (numerics.batch_invariant): the engine's reported
// logprobs equal the learner's old-logprob pass bit for bit whatever the batch (sizes,
// prompt lengths, prefill split over steps, preemption and re-prefill), sampled and greedy,
// FP32 and bf16; and the mode's ops have the exact gradients of their forwards.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <cstdlib>
#include <random>
#include <string>

#include "inference_engine/engine.h"
#include "policy/invariant_model.h"
#include "policy/invariant_ops.h"
#include "policy/minimax_model.h"
#include "rl/learner.h"
#include "tests/rl/batch_invariant_check.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

using batch_invariant_check::CheckZeroMismatch;

TEST(BatchInvariantTest, EngineAndLearnerLogprobsAreEqualFp32Sampled) {
  CheckZeroMismatch(TinyRolloutConfig(64), "float32", 0.8);
}

TEST(BatchInvariantTest, EngineAndLearnerLogprobsAreEqualFp32Greedy) {
  CheckZeroMismatch(TinyRolloutConfig(64), "float32", 0.0);
}

TEST(BatchInvariantTest, EngineAndLearnerLogprobsAreEqualBf16Sampled) {
  CheckZeroMismatch(TinyRolloutConfig(64), "bfloat16", 0.8);
}

TEST(BatchInvariantTest, EngineAndLearnerLogprobsAreEqualBf16Greedy) {
  CheckZeroMismatch(TinyRolloutConfig(64), "bfloat16", 0.0);
}

TEST(BatchInvariantTest, EngineAndLearnerLogprobsAreEqualTopOneLearnerModel) {
  CheckZeroMismatch(TinyLearnerConfig(2), "bfloat16", 1.0);
}

TEST(BatchInvariantTest, TheModesOptionsAreChecked) {
  auto policy = PolicyModel::Create(TinyRolloutConfig(64), 1);
  ASSERT_TRUE(policy.ok());
  EngineOptions eopts;
  eopts.batch_invariant = true;
  EXPECT_TRUE(Engine::Create(policy->get(), eopts).ok());
  // Expert parallelism runs in the mode (InvariantExpertParallelTest), and sequence
  // parallelism with it (run_invariant_tp); with whole experts the config refuses sequence
  // parallelism in the mode (run_config_test).
  LearnerOptions lopts;
  lopts.batch_invariant = true;
  lopts.data_parallel.expert_parallel = 2;
  EXPECT_TRUE(lopts.Validate().ok()) << lopts.Validate();
  lopts.sequence_parallel = true;
  EXPECT_TRUE(lopts.Validate().ok()) << lopts.Validate();
  // The model refuses a forward in the mode whose options it cannot run, as without it:
  // sequence parallelism on a model not split over TP.
  ForwardOptions fopts;
  fopts.batch_invariant = true;
  fopts.sequence_parallel = true;
  auto tokens = torch::zeros({3}, torch::kInt64);
  try {
    (*policy)->module()->Forward(tokens, PackedLayout::FromLengths({3}), fopts);
    ADD_FAILURE() << "a sequence-parallel forward of a whole model ran";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence_parallel needs a model sharded"),
              std::string::npos) << e.what();
  }
  fopts.sequence_parallel = false;
  EXPECT_EQ((*policy)->module()->Forward(tokens, PackedLayout::FromLengths({3}), fopts).hidden.size(0), 3);
}

// --- the ops: batch invariance and exact gradients ---

TEST(BatchInvariantOpsTest, ARowsResultDoesNotDependOnItsBatch) {
  std::mt19937 rng(std::random_device{}());
  torch::manual_seed(rng());
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto w = torch::randn({37, 129}).to(dtype);
    auto x = torch::randn({23, 129}).to(dtype);
    auto all = InvariantLinear(x, w);
    for (int64_t r : {int64_t{0}, int64_t{5}, int64_t{22}}) {
      EXPECT_TRUE(torch::equal(InvariantLinear(x.narrow(0, r, 1), w), all.narrow(0, r, 1)));
      EXPECT_TRUE(torch::equal(InvariantRmsNorm(x.narrow(0, r, 1), w[0].narrow(0, 0, 129), 1e-6),
                               InvariantRmsNorm(x, w[0].narrow(0, 0, 129), 1e-6).narrow(0, r, 1)));
    }
  }
  // Lightning: one pass over a document equals token-by-token steps from the carried state.
  const int64_t T = 9, H = 2, d = 4;
  auto q = torch::randn({T, H, d}), k = torch::randn({T, H, d}), v = torch::randn({T, H, d});
  auto slope = torch::rand({H});
  torch::Tensor state;
  auto whole = InvariantLightning(q, k, v, slope, {0, T}, {}, &state);
  torch::Tensor carried = torch::zeros({1, H, d, d});
  for (int64_t t = 0; t < T; ++t) {
    torch::Tensor next;
    auto o = InvariantLightning(q.narrow(0, t, 1), k.narrow(0, t, 1), v.narrow(0, t, 1), slope,
                                {0, 1}, carried, &next);
    EXPECT_TRUE(torch::equal(o, whole.narrow(0, t, 1))) << "token " << t;
    carried = next;
  }
  EXPECT_TRUE(torch::equal(carried, state));
  // The engine's step form: one token per row from its slot's state, advanced in place.
  auto states = torch::randn({5, H, d, d});
  auto slots = torch::tensor(std::vector<int64_t>{3, 0, 4});
  auto q3 = torch::randn({3, H, d}), k3 = torch::randn({3, H, d}), v3 = torch::randn({3, H, d});
  torch::Tensor last;
  auto o3 = InvariantLightning(q3, k3, v3, slope, {0, 1, 2, 3}, states.index_select(0, slots), &last);
  auto expected_states = states.index_copy(0, slots, last);
  EXPECT_TRUE(torch::equal(InvariantLightningStep(q3, k3, v3, slope, states, slots), o3));
  EXPECT_TRUE(torch::equal(states, expected_states));
  // Paged attention through a page table equals the same keys listed row by row.
  const int64_t page_size = 4, KVH = 1;
  auto kp = torch::randn({40, KVH, d}), vp = torch::randn({40, KVH, d});
  auto table = torch::tensor(std::vector<int32_t>{7, 2, 9, 0, 5, 1, 3, 8, 6, 4}, torch::kInt32).view({2, 5});
  auto qp = torch::randn({3, H, d});
  const std::vector<int64_t> page_row = {1, 0, 1}, count = {1, 13, 20};
  std::vector<std::vector<int64_t>> keys(3);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < count[i]; ++j) {
      keys[i].push_back(table[page_row[i]][j / page_size].item<int64_t>() * page_size + j % page_size);
    }
  }
  EXPECT_TRUE(torch::equal(
      InvariantPagedAttention(qp, kp, vp, table, torch::tensor(page_row), torch::tensor(count),
                              page_size, 0.5),
      InvariantPagedAttention(qp, kp, vp, keys, 0.5)));
  EXPECT_THROW(InvariantPagedAttention(qp, kp, vp, table, torch::tensor(page_row),
                                       torch::tensor(std::vector<int64_t>{1, 13, 21}), page_size, 0.5),
               c10::Error);  // past the table's 5 pages
}

// Compares the op (FP32) against a float64 reference: values and the gradients of a random
// weighting of the outputs with respect to every input.
void CheckGradients(const std::vector<torch::Tensor>& inputs,
                    const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& op,
                    const std::function<torch::Tensor(const std::vector<torch::Tensor>&)>& reference,
                    double tol) {
  std::vector<torch::Tensor> xf, xd;
  for (const auto& t : inputs) {
    xf.push_back(t.to(torch::kFloat32).detach().requires_grad_(true));
    xd.push_back(t.to(torch::kFloat64).detach().requires_grad_(true));
  }
  auto yf = op(xf), yd = reference(xd);
  ASSERT_EQ(yf.sizes(), yd.sizes());
  EXPECT_LT((yf.to(torch::kFloat64) - yd).abs().max().item<double>(), tol);
  auto weight = torch::randn(yd.sizes(), torch::kFloat64);
  auto gf = torch::autograd::grad({(yf * weight.to(torch::kFloat32)).sum()}, xf);
  auto gd = torch::autograd::grad({(yd * weight).sum()}, xd);
  for (size_t i = 0; i < gf.size(); ++i) {
    const double scale = std::max(1.0, gd[i].abs().max().item<double>());
    EXPECT_LT((gf[i].to(torch::kFloat64) - gd[i]).abs().max().item<double>(), tol * scale)
        << "input " << i;
  }
}

// Outside autograd the MoE block sorts its assignments by expert (the dispatch the CUDA
// graphs capture); under autograd each expert takes its rows: the same bits.
TEST(BatchInvariantOpsTest, SortedMoeGivesThePerExpertBits) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  torch::manual_seed(seed);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(std::string(c10::toString(dtype)));
    batch_invariant_check::CheckSortedMoe(torch::kCPU, dtype);
  }
}

TEST(BatchInvariantOpsTest, GradientsAreThoseOfTheForward) {
  std::mt19937 rng(std::random_device{}());
  torch::manual_seed(rng());
  using V = std::vector<torch::Tensor>;
  CheckGradients({torch::randn({5, 7}), torch::randn({3, 7})},
                 [](const V& a) { return InvariantLinear(a[0], a[1]); },
                 [](const V& a) { return torch::matmul(a[0], a[1].t()); }, 1e-5);
  CheckGradients({torch::randn({4, 6}), torch::rand({6}) + 0.5},
                 [](const V& a) { return InvariantRmsNorm(a[0], a[1], 1e-6); },
                 [](const V& a) { return a[1] * a[0] * torch::rsqrt(a[0].pow(2).mean(-1, true) + 1e-6); },
                 1e-5);
  CheckGradients({torch::randn({4, 6})}, [](const V& a) { return InvariantSilu(a[0]); },
                 [](const V& a) { return torch::silu(a[0]); }, 1e-5);
  CheckGradients({torch::randn({4, 6})}, [](const V& a) { return InvariantSigmoid(a[0]); },
                 [](const V& a) { return torch::sigmoid(a[0]); }, 1e-5);
  CheckGradients({torch::randn({4, 5})}, [](const V& a) { return InvariantSoftmax(a[0]); },
                 [](const V& a) { return torch::softmax(a[0], -1); }, 1e-5);
  auto targets = torch::randint(0, 9, {4}, torch::kInt64);
  CheckGradients({torch::randn({4, 9})},
                 [&](const V& a) { return InvariantTokenLogprobs(a[0], targets, {0.7}); },
                 [&](const V& a) {
                   return torch::log_softmax(a[0] / 0.7, -1).gather(1, targets.unsqueeze(1)).squeeze(1);
                 },
                 1e-5);

  // Lightning over two documents against its recurrence in float64.
  const std::vector<int64_t> cu = {0, 3, 8};
  const int64_t H = 2, d = 4;
  auto slope = torch::tensor({0.3f, 0.9f});
  CheckGradients(
      {torch::randn({8, H, d}), torch::randn({8, H, d}), torch::randn({8, H, d})},
      [&](const V& a) { return InvariantLightning(a[0], a[1], a[2], slope, cu); },
      [&](const V& a) {
        std::vector<torch::Tensor> outs;
        auto decay = torch::exp(-slope.to(torch::kFloat64)).view({H, 1, 1});
        for (size_t doc = 0; doc + 1 < cu.size(); ++doc) {
          auto S = torch::zeros({H, d, d}, torch::kFloat64);
          for (int64_t t = cu[doc]; t < cu[doc + 1]; ++t) {
            S = decay * S + a[1][t].unsqueeze(-1) * a[2][t].unsqueeze(-2);
            outs.push_back(torch::matmul(a[0][t].unsqueeze(-2), S).squeeze(-2));
          }
        }
        return torch::stack(outs);
      },
      1e-4);

  // Causal softmax attention, 4 heads over 2 KV heads, two documents.
  const double scale = 0.4;
  CheckGradients(
      {torch::randn({8, 4, d}), torch::randn({8, 2, d}), torch::randn({8, 2, d})},
      [&](const V& a) { return InvariantAttention(a[0], a[1], a[2], cu, scale); },
      [&](const V& a) {
        std::vector<torch::Tensor> outs;
        for (size_t doc = 0; doc + 1 < cu.size(); ++doc) {
          const int64_t b = cu[doc], n = cu[doc + 1] - cu[doc];
          auto q = a[0].narrow(0, b, n).permute({1, 0, 2});
          auto k = a[1].narrow(0, b, n).permute({1, 0, 2}).repeat_interleave(2, 0);
          auto v = a[2].narrow(0, b, n).permute({1, 0, 2}).repeat_interleave(2, 0);
          auto s = torch::matmul(q, k.transpose(1, 2)) * scale;
          auto mask = torch::ones({n, n}, torch::kBool).triu(1);
          auto p = torch::softmax(s.masked_fill(mask, -INFINITY), -1);
          outs.push_back(torch::matmul(p, v).permute({1, 0, 2}));
        }
        return torch::cat(outs);
      },
      1e-5);
}

// The attention backward CUDA tensors take (the forward recomputed over documents padded
// in groups by length, one autograd pass), run here on the CPU against the CPU loops'
// gradients: many documents of mixed lengths (an empty one too), grouped heads, in one
// group and in many (a small element budget).
TEST(BatchInvariantOpsTest, BatchedAttentionGradIsTheLoopsGradient) {
  std::mt19937 rng(std::random_device{}());
  const uint32_t seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  torch::manual_seed(seed);
  std::vector<int64_t> cu = {0};
  for (int i = 0; i < 12; ++i) cu.push_back(cu.back() + (i == 5 ? 0 : 1 + rng() % 23));
  const int64_t T = cu.back(), H = 6, KVH = 2, d = 8;
  const double scale = 0.35;
  auto q = torch::randn({T, H, d}).requires_grad_(), k = torch::randn({T, KVH, d}).requires_grad_();
  auto v = torch::randn({T, KVH, d}).requires_grad_();
  auto g = torch::randn({T, H, d});
  auto want = torch::autograd::grad({(InvariantAttention(q, k, v, cu, scale) * g).sum()}, {q, k, v});
  for (int64_t budget : {int64_t{1} << 26, int64_t{2000}}) {
    auto got = InvariantAttentionGrad(q.detach(), k.detach(), v.detach(), g, cu, scale, budget);
    for (int i = 0; i < 3; ++i) {
      const double tol = 1e-5 * std::max(1.0, want[i].abs().max().item<double>());
      EXPECT_LT((got[i] - want[i]).abs().max().item<double>(), tol) << "input " << i << " budget " << budget;
    }
  }
}

// The whole model's training gradient in the mode against the default path's (the same
// function, summed in other orders).
TEST(BatchInvariantOpsTest, ModelGradientsMatchTheDefaultPath) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed = rng();
  auto policy = PolicyModel::Create(TinyRolloutConfig(64), seed);
  ASSERT_TRUE(policy.ok());
  auto& module = (*policy)->module();
  const PackedLayout layout = PackedLayout::FromLengths({7, 12, 3});
  torch::manual_seed(seed);
  auto tokens = torch::randint(0, 61, {layout.num_tokens()}, torch::kInt64);
  auto targets = torch::randint(0, 61, {layout.num_tokens()}, torch::kInt64);
  auto weight = torch::randn({layout.num_tokens()});
  std::vector<std::vector<torch::Tensor>> grads(2);
  std::vector<torch::Tensor> values(2);
  for (int mode = 0; mode < 2; ++mode) {
    module->zero_grad();
    ForwardOptions fopts;
    fopts.batch_invariant = mode == 1;
    fopts.train_lightning = true;
    auto out = module->Forward(tokens, layout, fopts);
    auto lp = mode == 1 ? InvariantLmHeadLogprobs(*module, out.hidden, targets, 0.9)
                        : module->TokenLogprobs(out.hidden, targets, 0, 0.9);
    ((lp * weight).sum() + 0.1 * out.aux_loss).backward();
    values[mode] = lp.detach();
    for (const auto& p : module->parameters()) {
      grads[mode].push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    }
  }
  EXPECT_LT((values[0] - values[1]).abs().max().item<double>(), 1e-5);
  auto names = module->named_parameters();
  for (size_t i = 0; i < grads[0].size(); ++i) {
    const double scale = std::max(1e-3, grads[0][i].abs().max().item<double>());
    EXPECT_LT((grads[0][i] - grads[1][i]).abs().max().item<double>(), 1e-4 * scale)
        << names[i].key() << " (seed " << seed << ")";
  }
}

}  // namespace
}  // namespace lightrl
