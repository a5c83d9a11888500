#include "rl/learner.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "common/file_util.h"
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

}  // namespace
}  // namespace lightrl
