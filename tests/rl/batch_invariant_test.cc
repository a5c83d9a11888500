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
#include "tests/test_models.h"

namespace lightrl {
namespace {

struct Composition {
  std::string name;
  int64_t max_num_seqs = 8;
  int64_t max_prefill_tokens = 8192;
  int64_t kv_pages = 1024;  // KV pages of `page_size` tokens (0: the default budget)
  int64_t page_size = 4;
  int prompts = 8;
  int n = 2;
  bool expect_preemption = false;
};

std::vector<Composition> Compositions() {
  return {
      {"batch8_mixed_lengths", 8, 8192, 1024, 4, 6, 2, false},
      {"batch1", 1, 8192, 1024, 4, 3, 1, false},
      {"batch3", 3, 8192, 1024, 4, 4, 2, false},
      // At most 6 prompt tokens a step: prompts are admitted over several prefill steps
      // while others decode.
      {"prefill_chunks", 8, 6, 1024, 4, 6, 1, false},
      // 10 pages of 4 tokens for 8 sequences of up to 32: sequences are preempted and
      // resumed by re-prefill of the tokens they had generated.
      {"preemption", 8, 8192, 10, 4, 4, 2, true},
  };
}

std::vector<GenerationRequest> Requests(std::mt19937& rng, int prompts, int n, double temperature,
                                        int64_t vocab) {
  std::vector<GenerationRequest> reqs(prompts);
  for (int i = 0; i < prompts; ++i) {
    reqs[i].id = "p" + std::to_string(i);
    const int len = 2 + static_cast<int>(rng() % 17);  // 2..18 tokens
    for (int t = 0; t < len; ++t) reqs[i].prompt.push_back(static_cast<int32_t>(rng() % vocab));
    reqs[i].params.temperature = temperature;
    reqs[i].params.max_new_tokens = 12;
    reqs[i].params.n = n;
    reqs[i].params.seed = rng();
    reqs[i].params.early_stop_window = 0;
  }
  return reqs;
}

// The learner's samples of what the engine generated, with the engine's logprobs.
std::vector<TrainSample> Samples(const std::vector<GenerationRequest>& reqs,
                                 const std::vector<GenerationResult>& results, std::mt19937& rng) {
  std::vector<TrainSample> batch;
  for (size_t i = 0; i < results.size(); ++i) {
    EXPECT_TRUE(results[i].status.ok()) << results[i].status;
    for (size_t k = 0; k < results[i].samples.size(); ++k) {
      TrainSample s;
      s.id = results[i].id + "/" + std::to_string(k);
      s.prompt = reqs[i].prompt;
      s.response = results[i].samples[k].tokens;
      s.rollout_logprobs = results[i].samples[k].logprobs;
      s.advantage = std::normal_distribution<double>()(rng);
      batch.push_back(std::move(s));
    }
  }
  return batch;
}

// The mode's logprobs of one sample's response, its sequence forwarded alone.
std::vector<float> AloneLogprobs(PolicyModel& policy, const TrainSample& s, double temperature) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> seq(s.prompt.begin(), s.prompt.end());
  seq.insert(seq.end(), s.response.begin(), s.response.end());
  auto& module = policy.module();
  ForwardOptions fopts;
  fopts.batch_invariant = true;
  const int64_t P = static_cast<int64_t>(s.prompt.size()), R = static_cast<int64_t>(s.response.size());
  auto out = module->Forward(torch::tensor(seq), PackedLayout::FromLengths({P + R}), fopts);
  auto hidden = out.hidden.narrow(0, P - 1, R);
  auto targets = torch::tensor(std::vector<int64_t>(seq.begin() + P, seq.end()));
  auto lp = InvariantLmHeadLogprobs(*module, hidden, targets, temperature);
  return std::vector<float>(lp.data_ptr<float>(), lp.data_ptr<float>() + R);
}

void CheckZeroMismatch(const ModelConfig& config, const std::string& dtype, double temperature) {
  // BATCH_INVARIANT_TEST_SEED repeats a run's seed (printed with any failure).
  uint64_t seed = std::random_device{}();
  if (const char* fixed = std::getenv("BATCH_INVARIANT_TEST_SEED")) seed = std::strtoull(fixed, nullptr, 10);
  SCOPED_TRACE("seed " + std::to_string(seed) + " dtype " + dtype + " T " +
               std::to_string(temperature));
  std::mt19937 rng(seed);
  PolicyOptions popts;
  popts.dtype = dtype;
  auto policy = PolicyModel::Create(config, rng(), popts);
  ASSERT_TRUE(policy.ok()) << policy.status();
  const int64_t elem = dtype == "bfloat16" ? 2 : 4;
  int64_t softmax_layers = 0;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) softmax_layers += config.is_lightning(i) ? 0 : 1;
  const double learner_t = temperature > 0 ? temperature : 1.0;
  for (const Composition& c : Compositions()) {
    SCOPED_TRACE(c.name);
    EngineOptions eopts;
    eopts.batch_invariant = true;
    eopts.max_num_seqs = c.max_num_seqs;
    eopts.max_prefill_tokens = c.max_prefill_tokens;
    eopts.page_size = c.page_size;
    eopts.kv_cache_bytes =
        c.kv_pages * softmax_layers * c.page_size * config.num_key_value_heads * config.head_dim * 2 * elem;
    auto engine = Engine::Create(policy->get(), eopts);
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto reqs = Requests(rng, c.prompts, c.n, temperature, config.vocab_size);
    auto batch = Samples(reqs, (*engine)->Generate(reqs), rng);
    ASSERT_FALSE(batch.empty());
    if (c.expect_preemption) {
      EXPECT_GT((*engine)->stats().preemptions, 0) << "the cache did not force a preemption";
    }
    if (c.max_prefill_tokens < 100) {
      EXPECT_GT((*engine)->stats().prefill_steps, 1);
    }

    // Each sample forwarded alone ...
    for (const TrainSample& s : batch) {
      auto alone = AloneLogprobs(**policy, s, learner_t);
      ASSERT_EQ(alone.size(), s.rollout_logprobs.size());
      for (size_t j = 0; j < alone.size(); ++j) {
        ASSERT_EQ(alone[j], s.rollout_logprobs[j]) << s.id << " token " << j;
      }
    }
    // ... and the learner's old-logprob pass over the whole batch, packed into forwards of
    // various sizes. Each learner's update (at lr 1e-12 it still moves weights near zero by
    // an ulp) is undone before the next one reads the weights the engine generated with.
    auto generated_with = (*policy)->ExportWeights(DType::kF32);
    ASSERT_TRUE(generated_with.ok()) << generated_with.status();
    for (int64_t max_tokens : {int64_t{16384}, int64_t{40}}) {
      LearnerOptions lopts;
      lopts.batch_invariant = true;
      lopts.temperature = learner_t;
      lopts.max_tokens_per_forward = max_tokens;
      lopts.optimizer.lr = 1e-12;
      auto learner = Learner::Create(policy->get(), lopts);
      ASSERT_TRUE(learner.ok()) << learner.status();
      auto stats = (*learner)->TrainRl(batch);
      ASSERT_TRUE(stats.ok()) << stats.status();
      EXPECT_EQ(stats->rollout_logprob_abs_diff_max, 0.0) << "max_tokens_per_forward " << max_tokens;
      EXPECT_EQ(stats->rollout_logprob_abs_diff, 0.0);
      EXPECT_EQ(stats->rollout_kl, 0.0);
      ASSERT_TRUE((*policy)->ImportWeights(DType::kF32, *generated_with).ok());
    }
  }
}

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

TEST(BatchInvariantTest, CudaPolicyIsRefusedWithAClearError) {
  // Without a GPU the check is of the options only: the CPU policy is accepted.
  auto policy = PolicyModel::Create(TinyRolloutConfig(64), 1);
  ASSERT_TRUE(policy.ok());
  EngineOptions eopts;
  eopts.batch_invariant = true;
  EXPECT_TRUE(Engine::Create(policy->get(), eopts).ok());
  // Expert parallelism runs in the mode (InvariantExpertParallelTest); sequence
  // parallelism does not yet.
  LearnerOptions lopts;
  lopts.batch_invariant = true;
  lopts.data_parallel.expert_parallel = 2;
  EXPECT_TRUE(lopts.Validate().ok()) << lopts.Validate();
  lopts.sequence_parallel = true;
  auto st = lopts.Validate();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("batch_invariant"), std::string::npos) << st;
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
