// The batch-invariant mode's end-to-end check, shared by the CPU test
// (batch_invariant_test.cc) and the CUDA one (batch_invariant_gpu_test.cc): on a given
// device, the engine's reported logprobs over several batch compositions (sizes, mixed
// prompt lengths, prefill split over steps, preemption and re-prefill) equal each sample
// forwarded alone and the learner's old-logprob pass, bit for bit.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "inference_engine/engine.h"
#include "policy/invariant_model.h"
#include "policy/invariant_ops.h"
#include "policy/minimax_model.h"
#include "rl/learner.h"

namespace lightrl {
namespace batch_invariant_check {

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

inline std::vector<Composition> Compositions() {
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

inline std::vector<GenerationRequest> Requests(std::mt19937& rng, int prompts, int n, double temperature,
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
inline std::vector<TrainSample> Samples(const std::vector<GenerationRequest>& reqs,
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
inline std::vector<float> AloneLogprobs(PolicyModel& policy, const TrainSample& s, double temperature) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> seq(s.prompt.begin(), s.prompt.end());
  seq.insert(seq.end(), s.response.begin(), s.response.end());
  auto& module = policy.module();
  ForwardOptions fopts;
  fopts.batch_invariant = true;
  const int64_t P = static_cast<int64_t>(s.prompt.size()), R = static_cast<int64_t>(s.response.size());
  const auto device = module->lm_head->weight.device();
  auto out = module->Forward(torch::tensor(seq).to(device), PackedLayout::FromLengths({P + R}), fopts);
  auto hidden = out.hidden.narrow(0, P - 1, R);
  auto targets = torch::tensor(std::vector<int64_t>(seq.begin() + P, seq.end())).to(device);
  auto lp = InvariantLmHeadLogprobs(*module, hidden, targets, temperature).to(torch::kCPU);
  return std::vector<float>(lp.data_ptr<float>(), lp.data_ptr<float>() + R);
}

// The MoE block outside autograd (the sorted dispatch: on CUDA on the device) against the
// same block under autograd (each expert its rows): the same bits, with and without
// dropping, experts without tokens included.
inline void CheckSortedMoe(const torch::Device& device, torch::ScalarType dtype) {
  for (int64_t experts : {3, 8}) {
    ModelConfig c;
    c.hidden_size = 136;  // K not a multiple of 64, rows of 16 bytes
    c.intermediate_size = 72;
    c.num_local_experts = experts;
    c.num_experts_per_tok = 2;
    SparseMoe moe(c);
    moe->to(device, dtype);
    for (int64_t T : {1, 37, 300}) {
      for (double factor : {0.0, 0.9, 0.3}) {
        SCOPED_TRACE("experts " + std::to_string(experts) + " T " + std::to_string(T) +
                     " capacity factor " + std::to_string(factor));
        auto x = torch::randn({T, c.hidden_size}).to(dtype).to(device);
        torch::Tensor sorted;
        {
          torch::NoGradGuard no_grad;
          sorted = InvariantMoe(*moe, x, factor).first;
        }
        auto per_expert = InvariantMoe(*moe, x.clone().requires_grad_(), factor).first.detach();
        EXPECT_TRUE(torch::equal(sorted.cpu(), per_expert.cpu()))
            << "max |diff| " << (sorted.cpu().to(torch::kFloat64) - per_expert.cpu().to(torch::kFloat64)).abs().max().item<double>();
      }
    }
  }
}

inline void CheckZeroMismatch(const ModelConfig& config, const std::string& dtype, double temperature,
                              const std::string& device = "cpu") {
  // BATCH_INVARIANT_TEST_SEED repeats a run's seed (printed with any failure).
  uint64_t seed = std::random_device{}();
  if (const char* fixed = std::getenv("BATCH_INVARIANT_TEST_SEED")) seed = std::strtoull(fixed, nullptr, 10);
  SCOPED_TRACE("seed " + std::to_string(seed) + " dtype " + dtype + " T " +
               std::to_string(temperature) + " device " + device);
  std::mt19937 rng(seed);
  PolicyOptions popts;
  popts.dtype = dtype;
  popts.device = device;
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

}  // namespace batch_invariant_check
}  // namespace lightrl
