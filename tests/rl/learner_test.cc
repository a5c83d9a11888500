#include "rl/learner.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "common/file_util.h"
#include "inference_engine/engine.h"
#include "policy/minimax_model.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

ModelConfig TinyConfig() { return TinyLearnerConfig(2); }

std::vector<TrainSample> RandomBatch(std::mt19937& rng, int n) {
  std::vector<TrainSample> batch(n);
  for (auto& s : batch) {
    for (int i = 0; i < 3 + static_cast<int>(rng() % 4); ++i) s.prompt.push_back(rng() % 40);
    for (int i = 0; i < 2 + static_cast<int>(rng() % 5); ++i) s.response.push_back(rng() % 40);
    s.advantage = std::normal_distribution<double>()(rng);
  }
  return batch;
}

double SampleLogprob(PolicyModel& policy, const TrainSample& s) {
  std::vector<int32_t> seq = s.prompt;
  seq.insert(seq.end(), s.response.begin(), s.response.end());
  auto lp = policy.TokenLogprobs({seq});
  double sum = 0;
  for (size_t t = s.prompt.size(); t < seq.size(); ++t) sum += (*lp)[0][t];
  return sum;
}

TEST(LearnerTest, CispoStepRaisesPositiveAndLowersNegativeSamples) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  LearnerOptions opts;
  opts.optimizer.lr = 1e-2;
  auto learner = Learner::Create(policy->get(), opts);
  ASSERT_TRUE(learner.ok()) << learner.status();
  auto batch = RandomBatch(rng, 2);
  batch[0].advantage = 1.0;
  batch[1].advantage = -1.0;
  const double before0 = SampleLogprob(**policy, batch[0]);
  const double before1 = SampleLogprob(**policy, batch[1]);
  auto stats = (*learner)->TrainRl(batch);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ((*learner)->version(), 1);
  EXPECT_GT(SampleLogprob(**policy, batch[0]), before0);
  EXPECT_LT(SampleLogprob(**policy, batch[1]), before1);
  EXPECT_GT(stats->grad_norm, 0);
  EXPECT_GT(stats->entropy, 0);
}

TEST(LearnerTest, Bf16PolicyTrainsThroughFp32MasterWeights) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed = rng();
  PolicyOptions bf16;
  bf16.dtype = "bfloat16";
  // Every token goes to every expert: with a discrete top-k choice, a bf16 near-tie in the
  // router sends a token elsewhere and the two trajectories part for reasons unrelated to
  // the master weights.
  ModelConfig config = TinyConfig();
  config.num_experts_per_tok = config.num_local_experts;
  auto low = PolicyModel::Create(config, seed, bf16);
  auto full = PolicyModel::Create(config, seed);
  ASSERT_TRUE(low.ok() && full.ok());
  // Start both from the same (bf16-representable) weights.
  std::vector<torch::Tensor> init;
  {
    torch::NoGradGuard no_grad;
    auto lp = (*low)->module()->parameters();
    auto fp = (*full)->module()->parameters();
    for (size_t i = 0; i < lp.size(); ++i) {
      fp[i].copy_(lp[i].to(torch::kFloat32));
      init.push_back(fp[i].clone());
    }
  }
  LearnerOptions opts;
  // Each Adam update (about lr in size) is below half a bf16 ulp at 1.0 (2^-9), so the
  // RMSNorm weights (1.0) move only if updates accumulate in FP32 master copies.
  opts.optimizer.lr = 1e-4;
  opts.optimizer.grad_clip = 0;
  auto l_low = Learner::Create(low->get(), opts);
  auto l_full = Learner::Create(full->get(), opts);
  ASSERT_TRUE(l_low.ok() && l_full.ok());
  auto batch = RandomBatch(rng, 3);
  for (int step = 0; step < 40; ++step) {
    ASSERT_TRUE((*l_low)->TrainRl(batch).ok());
    ASSERT_TRUE((*l_full)->TrainRl(batch).ok());
  }
  // The bf16 run follows the FP32 run: the total update of every tensor points the same
  // way. (Elementwise they may part: Adam normalises each element's step, so where a
  // gradient is near zero, bf16 noise can flip its sign.)
  auto lp = (*low)->module()->parameters();
  auto fp = (*full)->module()->parameters();
  auto names = (*low)->module()->named_parameters().keys();
  int64_t norm_moved = 0;
  double dot = 0, nl = 0, nf = 0;
  for (size_t i = 0; i < lp.size(); ++i) {
    EXPECT_EQ(lp[i].scalar_type(), torch::kBFloat16);
    // Compared with the FP32 run's weights as bf16 holds them.
    auto dl = (lp[i].to(torch::kFloat64) - init[i].to(torch::kFloat64)).flatten();
    auto df = (fp[i].to(torch::kBFloat16).to(torch::kFloat64) - init[i].to(torch::kFloat64))
                  .flatten();
    const double d = dl.dot(df).item<double>();
    const double a = dl.dot(dl).item<double>(), b = df.dot(df).item<double>();
    dot += d, nl += a, nf += b;
    if (b > 0) {
      const double cosine = d / std::sqrt(a * b + 1e-300);
      EXPECT_GT(cosine, 0.8) << names[i] << " seed " << seed;
      EXPECT_NEAR(std::sqrt(a / b), 1.0, 0.3) << names[i] << " seed " << seed;
    }
    if (names[i].find("norm") != std::string::npos) {
      norm_moved += (lp[i].to(torch::kFloat32) != 1.0).sum().item<int64_t>();
    }
  }
  EXPECT_GT(dot / std::sqrt(nl * nf), 0.95) << "seed " << seed;
  EXPECT_GT(norm_moved, 0) << "bf16 norm weights never moved: updates were lost to rounding";
  EXPECT_EQ((*l_low)->version(), 40);
}

TEST(LearnerTest, SavedStateContinuesLikeAnUninterruptedRun) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed = rng();
  auto a = PolicyModel::Create(TinyConfig(), seed);
  auto b = PolicyModel::Create(TinyConfig(), seed);
  LearnerOptions opts;
  opts.optimizer.lr = 3e-3;
  opts.minibatches = 2;
  auto la = Learner::Create(a->get(), opts);
  auto batch1 = RandomBatch(rng, 4), batch2 = RandomBatch(rng, 4);
  ASSERT_TRUE((*la)->TrainRl(batch1).ok());
  char tmpl[] = "/tmp/lightrl_learner_XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  ASSERT_TRUE((*la)->SaveState(dir + "/opt.pt").ok());
  ASSERT_TRUE((*a)->Save(dir + "/model").ok());
  ASSERT_TRUE((*la)->TrainRl(batch2).ok());

  auto restored = PolicyModel::Load(dir + "/model");
  ASSERT_TRUE(restored.ok());
  auto lr = Learner::Create(restored->get(), opts);
  ASSERT_TRUE((*lr)->LoadState(dir + "/opt.pt").ok());
  EXPECT_EQ((*lr)->version(), 2);
  ASSERT_TRUE((*lr)->TrainRl(batch2).ok());
  auto pa = (*a)->module()->parameters();
  auto pr = (*restored)->module()->parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pr[i])) << i;
  EXPECT_TRUE(RemoveTree(dir).ok()) << dir;
  (void)b;
}


// Samples drawn by the real engine at `temperature`, with its logprobs.
std::vector<TrainSample> EngineSamples(PolicyModel* policy, double temperature, uint64_t seed,
                                       int prompts, int n) {
  EngineOptions eopts;
  eopts.max_num_seqs = prompts * n;
  auto engine = Engine::Create(policy, eopts);
  EXPECT_TRUE(engine.ok()) << engine.status();
  std::mt19937 rng(seed);
  std::vector<GenerationRequest> reqs(prompts);
  for (int i = 0; i < prompts; ++i) {
    reqs[i].id = "p" + std::to_string(i);
    for (int t = 0; t < 3 + i % 3; ++t) reqs[i].prompt.push_back(static_cast<int32_t>(rng() % 40));
    reqs[i].params.temperature = temperature;
    reqs[i].params.max_new_tokens = 6;
    reqs[i].params.n = n;
    reqs[i].params.seed = rng();
    reqs[i].params.early_stop_window = 0;
  }
  std::vector<TrainSample> batch;
  for (const GenerationResult& r : (*engine)->Generate(reqs)) {
    EXPECT_TRUE(r.status.ok()) << r.status;
    for (size_t k = 0; k < r.samples.size(); ++k) {
      TrainSample s;
      s.id = r.id + "/" + std::to_string(k);
      s.prompt = reqs[std::stoi(r.id.substr(1))].prompt;
      s.response = r.samples[k].tokens;
      s.rollout_logprobs = r.samples[k].logprobs;
      s.advantage = std::normal_distribution<double>()(rng);
      batch.push_back(std::move(s));
    }
  }
  return batch;
}

// log softmax(logits / T) of each response token, in float64 from the model's hidden
// states: the reference the learner's logprobs must match.
std::vector<double> ReferenceLogprobs(PolicyModel& policy, const TrainSample& s, double temperature) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> seq(s.prompt.begin(), s.prompt.end());
  seq.insert(seq.end(), s.response.begin(), s.response.end());
  auto& module = policy.module();
  auto out = module->Forward(torch::tensor(seq), PackedLayout::FromLengths({static_cast<int64_t>(seq.size())}));
  auto logits = module->Logits(out.hidden).to(torch::kFloat64) / temperature;
  auto logp = torch::log_softmax(logits, -1);
  std::vector<double> lps;
  for (size_t j = 0; j < s.response.size(); ++j) {
    lps.push_back(logp[static_cast<int64_t>(s.prompt.size() + j - 1)][s.response[j]].item<double>());
  }
  return lps;
}

// A model built for an expert shard fixes the learner's expert layout: another
// expert_parallel, or a rank that is not the shard's place, is refused naming both.
TEST(LearnerTest, ExpertShardMustMatchTheLearnersLayout) {
  ShardCoords shard;
  shard.ep = 2;
  auto policy = PolicyModel::CreateShard(TinyLearnerConfig(4), 3, shard);
  ASSERT_TRUE(policy.ok()) << policy.status();
  LearnerOptions opts;
  auto learner = Learner::Create(policy->get(), opts);
  ASSERT_FALSE(learner.ok());
  EXPECT_NE(learner.status().message().find(
                "data_parallel.expert_parallel = 1 but the model holds the experts of tp 0/1, "
                "ep 0/2, expert_tp 0/1"),
            std::string::npos)
      << learner.status();
  opts.data_parallel.expert_parallel = 2;
  learner = Learner::Create(policy->get(), opts);  // one process cannot be an EP group of 2
  ASSERT_FALSE(learner.ok());
  EXPECT_NE(learner.status().message().find("the model's experts are sharded as tp 0/1, ep 0/2"),
            std::string::npos)
      << learner.status();
}

TEST(LearnerTest, LogprobsUseTheRolloutTemperature) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  const double T = 0.6;
  auto batch = EngineSamples(policy->get(), T, rng(), 3, 4);
  ASSERT_FALSE(batch.empty());
  // The engine's own logprobs are of softmax(logits / T).
  for (const TrainSample& s : batch) {
    auto ref = ReferenceLogprobs(**policy, s, T);
    for (size_t j = 0; j < ref.size(); ++j) EXPECT_NEAR(s.rollout_logprobs[j], ref[j], 1e-4) << s.id;
  }
  LearnerOptions opts;
  opts.optimizer.lr = 1e-12;  // the old-logprob pass is what is checked, not the update
  opts.temperature = T;
  auto learner = Learner::Create(policy->get(), opts);
  ASSERT_TRUE(learner.ok());
  auto stats = (*learner)->TrainRl(batch);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_LT(stats->rollout_logprob_abs_diff_max, 1e-4);
  EXPECT_NEAR(stats->ratio_mean, 1.0, 1e-6);

  // A learner at T = 1 sees a different distribution than the engine sampled from.
  LearnerOptions at_one = opts;
  at_one.temperature = 1.0;
  auto learner1 = Learner::Create(policy->get(), at_one);
  ASSERT_TRUE(learner1.ok());
  auto stats1 = (*learner1)->TrainRl(batch);
  ASSERT_TRUE(stats1.ok());
  EXPECT_GT(stats1->rollout_logprob_abs_diff, 1e-3);
}

TEST(LearnerTest, StaleSamplesAreWeightedByTruncatedIsAgainstTheEngine) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  // Sampled at version 0 ...
  auto stale = EngineSamples(policy->get(), 1.0, rng(), 3, 4);
  LearnerOptions opts;
  opts.optimizer.lr = 3e-2;
  opts.loss.truncated_is_cap = 1.5;
  auto learner = Learner::Create(policy->get(), opts);
  ASSERT_TRUE(learner.ok());
  // ... trained on after two updates on other samples moved the policy.
  for (int i = 0; i < 2; ++i) ASSERT_TRUE((*learner)->TrainSft(RandomBatch(rng, 4), 3e-2).ok());
  double expected = 0, tokens = 0, moved = 0;
  for (const TrainSample& s : stale) {
    auto now = ReferenceLogprobs(**policy, s, 1.0);
    for (size_t j = 0; j < now.size(); ++j) {
      const double w = std::exp(now[j] - s.rollout_logprobs[j]);
      moved = std::max(moved, std::abs(w - 1));
      expected += std::min(w, 1.5);
      tokens += 1;
    }
  }
  ASSERT_GT(moved, 0.05) << "the updates did not move the policy enough for a meaningful check";
  auto stats = (*learner)->TrainRl(stale);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_NEAR(stats->truncated_is_weight_mean, expected / tokens, 1e-4);
  EXPECT_GT(stats->rollout_logprob_abs_diff, 1e-3);
}

TEST(LearnerTest, MissingOrBadEngineLogprobsAreErrorsNamingTheSample) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  LearnerOptions opts;
  opts.loss.truncated_is_cap = 2.0;
  auto learner = Learner::Create(policy->get(), opts);
  ASSERT_TRUE(learner.ok());
  auto batch = RandomBatch(rng, 3);
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i].id = "group-7/" + std::to_string(i);
    batch[i].rollout_logprobs.assign(batch[i].response.size(), -0.5f);
  }
  batch[1].rollout_logprobs.clear();
  auto missing = (*learner)->TrainRl(batch);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("group-7/1"), std::string::npos) << missing.status();
  EXPECT_EQ((*learner)->version(), 0);

  batch[1].rollout_logprobs.assign(batch[1].response.size(), -0.5f);
  batch[2].rollout_logprobs[0] = std::nanf("");
  auto nan = (*learner)->TrainRl(batch);
  ASSERT_FALSE(nan.ok());
  EXPECT_NE(nan.status().message().find("group-7/2"), std::string::npos) << nan.status();

  // Without truncated IS a sample may come without engine logprobs (an SFT'd log, say),
  // but never with the wrong count.
  LearnerOptions plain;
  auto learner2 = Learner::Create(policy->get(), plain);
  batch[2].rollout_logprobs.clear();
  EXPECT_TRUE((*learner2)->TrainRl(batch).ok());
  batch[2].rollout_logprobs.assign(batch[2].response.size() + 1, -0.5f);
  EXPECT_FALSE((*learner2)->TrainRl(batch).ok());
}

TEST(LearnerTest, NormaliserCountsKeptTokensOnly) {
  // A masked-out sample (overlong filter) adds nothing: neither gradient nor tokens to the
  // normaliser, so the update equals the one without it.
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed = rng();
  auto a = PolicyModel::Create(TinyConfig(), seed);
  auto b = PolicyModel::Create(TinyConfig(), seed);
  LearnerOptions opts;
  opts.optimizer.lr = 1e-2;
  opts.optimizer.grad_clip = 0;
  opts.optimizer.aux_loss_coef = 0;  // the router's aux loss sees every token of a forward
  // Packing another sample changes the GEMM shapes and so the rounding of every gradient
  // (~1e-7 of its largest terms). Adam's first step is about lr x g / (|g| + eps): with a
  // small eps, an entry whose terms cancel to within that rounding takes a full step of
  // either sign (1 run in ~40 with eps 1e-8). With eps 1e-4 such an entry's step is
  // lr x g / eps, which the rounding moves by ~1e-8.
  opts.optimizer.eps = 1e-4;
  auto la = Learner::Create(a->get(), opts);
  auto lb = Learner::Create(b->get(), opts);
  auto batch = RandomBatch(rng, 4);
  auto with_masked = batch;
  auto extra = RandomBatch(rng, 1)[0];
  extra.keep = false;
  extra.advantage = 5.0;
  with_masked.insert(with_masked.begin() + 2, extra);
  auto sa = (*la)->TrainRl(batch);
  auto sb = (*lb)->TrainRl(with_masked);
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_EQ(sa->tokens, sb->tokens);
  EXPECT_NEAR(sa->policy_loss, sb->policy_loss, 1e-6);
  auto pa = (*a)->module()->parameters();
  auto pb = (*b)->module()->parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(torch::allclose(pa[i], pb[i], 1e-5, 1e-6))
        << "parameter " << i << ", max |diff| " << (pa[i] - pb[i]).abs().max().item<float>()
        << ", seed " << seed;
  }
  // Halving a kept sample's tokens' share: the same batch with the masked sample kept
  // trains differently (the test can fail).
  with_masked[2].keep = true;
  auto c = PolicyModel::Create(TinyConfig(), seed);
  auto lc = Learner::Create(c->get(), opts);
  ASSERT_TRUE((*lc)->TrainRl(with_masked).ok());
  bool differs = false;
  auto pc = (*c)->module()->parameters();
  for (size_t i = 0; i < pa.size(); ++i) differs |= !torch::allclose(pa[i], pc[i], 1e-5, 1e-6);
  EXPECT_TRUE(differs) << "seed " << seed;
}

TEST(LearnerTest, OldLogprobsAreThePolicyBeforeTheBatch) {
  // With one update per batch every ratio is exactly 1; with two, the second minibatch's
  // ratios are taken against the weights before the first update.
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  LearnerOptions opts;
  opts.optimizer.lr = 3e-2;
  auto learner = Learner::Create(policy->get(), opts);
  auto batch = RandomBatch(rng, 6);
  auto one = (*learner)->TrainRl(batch);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->ratio_min, 1.0);
  EXPECT_EQ(one->ratio_max, 1.0);
  EXPECT_EQ(one->clip_fraction, 0.0);

  opts.minibatches = 2;
  auto learner2 = Learner::Create(policy->get(), opts);
  auto two = (*learner2)->TrainRl(batch);
  ASSERT_TRUE(two.ok());
  EXPECT_GT(std::max(two->ratio_max - 1, 1 - two->ratio_min), 1e-4);
  EXPECT_EQ((*learner2)->version(), 2);
}

}  // namespace
}  // namespace lightrl
