// LearnerStatsAccumulator against direct arithmetic on random forwards: the reported means
// are the token-weighted means, the extremes come only from forwards with tokens, and
// folding per-rank accumulators together (Merge, and AllReduce over real Gloo ranks)
// gives what one accumulator over every forward gives.
#include "rl/learner_stats.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "tests/test_ports.h"
#include "tests/thread_ranks.h"

namespace lightrl {
namespace {

LossTokenStats RandomForward(std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  LossTokenStats s;
  // Some forwards hold no loss tokens (all masked): they must not move the extremes.
  s.num_tokens = rng() % 4 == 0 ? 0 : static_cast<double>(1 + rng() % 50);
  s.clip_fraction = u(rng);
  s.ratio_min = 0.5 + u(rng);
  s.ratio_max = s.ratio_min + u(rng);
  s.ratio_mean = (s.ratio_min + s.ratio_max) / 2;
  s.clipped_weight_mean = u(rng);
  s.approx_kl = 0.01 * u(rng);
  s.truncated_is_weight_mean = u(rng);
  return s;
}

TEST(LearnerStatsAccumulatorTest, MeansAreTokenWeightedAndExtremesSkipEmptyForwards) {
  std::mt19937 rng(std::random_device{}());
  const int n = 1 + static_cast<int>(rng() % 20);
  std::vector<LossTokenStats> forwards;
  for (int i = 0; i < n; ++i) forwards.push_back(RandomForward(rng));
  forwards[0].num_tokens = 7;  // at least one forward with tokens
  LearnerStatsAccumulator acc;
  for (const auto& f : forwards) acc.AddLossTokens(f);
  acc.entropy_sum = 12.5, acc.entropy_tokens = 5;
  acc.rollout_abs_diff_sum = 3, acc.rollout_kl_sum = 0.5, acc.rollout_tokens = 4;
  acc.rollout_abs_diff_max = 0.75;
  LearnerStats stats;
  acc.WriteTo(&stats);

  double w = 0, clip = 0, ratio = 0, tis = 0, lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const auto& f : forwards) {
    w += f.num_tokens;
    clip += f.num_tokens * f.clip_fraction;
    ratio += f.num_tokens * f.ratio_mean;
    tis += f.num_tokens * f.truncated_is_weight_mean;
    if (f.num_tokens > 0) lo = std::min(lo, f.ratio_min), hi = std::max(hi, f.ratio_max);
  }
  EXPECT_EQ(stats.tokens, static_cast<int64_t>(w));
  EXPECT_NEAR(stats.clip_fraction, clip / w, 1e-12);
  EXPECT_NEAR(stats.ratio_mean, ratio / w, 1e-12);
  EXPECT_NEAR(stats.truncated_is_weight_mean, tis / w, 1e-12);
  EXPECT_EQ(stats.ratio_min, lo);
  EXPECT_EQ(stats.ratio_max, hi);
  EXPECT_DOUBLE_EQ(stats.entropy, 2.5);
  EXPECT_DOUBLE_EQ(stats.rollout_logprob_abs_diff, 0.75);
  EXPECT_DOUBLE_EQ(stats.rollout_kl, 0.125);
  EXPECT_DOUBLE_EQ(stats.rollout_logprob_abs_diff_max, 0.75);
}

TEST(LearnerStatsAccumulatorTest, NoTokensReportsTheDefaults) {
  LearnerStatsAccumulator acc;
  acc.AddLossTokens({});  // a forward without loss tokens
  LearnerStats stats;
  acc.WriteTo(&stats);
  EXPECT_EQ(stats.tokens, 0);
  EXPECT_EQ(stats.ratio_min, 0);  // never +inf
  EXPECT_EQ(stats.ratio_max, 0);
  EXPECT_EQ(stats.clip_fraction, 0);
  EXPECT_EQ(stats.truncated_is_weight_mean, 1);  // LearnerStats' "off" value stays
  EXPECT_EQ(stats.entropy, 0);
  EXPECT_EQ(stats.rollout_kl, 0);
}

// Random forwards dealt to `ranks` accumulators; also returns the one over all of them.
std::vector<LearnerStatsAccumulator> Deal(std::mt19937& rng, int ranks, LearnerStatsAccumulator* all) {
  std::vector<LearnerStatsAccumulator> by_rank(ranks);
  const int n = static_cast<int>(rng() % 30);
  for (int i = 0; i < n; ++i) {
    const LossTokenStats f = RandomForward(rng);
    by_rank[rng() % ranks].AddLossTokens(f);
    all->AddLossTokens(f);
  }
  std::uniform_real_distribution<double> u(0, 2);
  for (auto& a : by_rank) {
    a.loss = u(rng), a.policy_loss = u(rng), a.aux_loss = u(rng);
    a.entropy_sum = u(rng), a.entropy_tokens = 1 + rng() % 9;
    a.rollout_abs_diff_sum = u(rng), a.rollout_kl_sum = u(rng), a.rollout_tokens = rng() % 9;
    a.rollout_abs_diff_max = u(rng);
    all->loss += a.loss, all->policy_loss += a.policy_loss, all->aux_loss += a.aux_loss;
    all->entropy_sum += a.entropy_sum, all->entropy_tokens += a.entropy_tokens;
    all->rollout_abs_diff_sum += a.rollout_abs_diff_sum, all->rollout_kl_sum += a.rollout_kl_sum;
    all->rollout_tokens += a.rollout_tokens;
    all->rollout_abs_diff_max = std::max(all->rollout_abs_diff_max, a.rollout_abs_diff_max);
  }
  return by_rank;
}

void ExpectSameStats(const LearnerStatsAccumulator& got, const LearnerStatsAccumulator& want) {
  LearnerStats a, b;
  got.WriteTo(&a);
  want.WriteTo(&b);
  for (auto [x, y, name] : {std::tuple{a.loss, b.loss, "loss"}, {a.policy_loss, b.policy_loss, "policy_loss"},
                            {a.aux_loss, b.aux_loss, "aux_loss"}, {a.entropy, b.entropy, "entropy"},
                            {a.clip_fraction, b.clip_fraction, "clip_fraction"},
                            {a.ratio_mean, b.ratio_mean, "ratio_mean"}, {a.ratio_min, b.ratio_min, "ratio_min"},
                            {a.ratio_max, b.ratio_max, "ratio_max"}, {a.approx_kl, b.approx_kl, "approx_kl"},
                            {a.clipped_weight_mean, b.clipped_weight_mean, "clipped_weight_mean"},
                            {a.truncated_is_weight_mean, b.truncated_is_weight_mean, "tis"},
                            {a.rollout_logprob_abs_diff, b.rollout_logprob_abs_diff, "abs_diff"},
                            {a.rollout_logprob_abs_diff_max, b.rollout_logprob_abs_diff_max, "abs_diff_max"},
                            {a.rollout_kl, b.rollout_kl, "rollout_kl"}}) {
    EXPECT_NEAR(x, y, 1e-12 * std::max(1.0, std::abs(y))) << name;
  }
  EXPECT_EQ(a.tokens, b.tokens);
}

TEST(LearnerStatsAccumulatorTest, MergedRanksEqualOneAccumulator) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 20; ++trial) {
    LearnerStatsAccumulator all;
    auto by_rank = Deal(rng, 1 + static_cast<int>(rng() % 4), &all);
    LearnerStatsAccumulator merged = by_rank[0];
    for (size_t r = 1; r < by_rank.size(); ++r) merged.Merge(by_rank[r]);
    ExpectSameStats(merged, all);
  }
}

TEST(LearnerStatsAccumulatorTest, AllReduceOverGlooRanksEqualsMerge) {
  RanksAreThreadsOfThisProcess();
  std::mt19937 rng(std::random_device{}());
  constexpr int kRanks = 3;
  LearnerStatsAccumulator all;
  auto by_rank = Deal(rng, kRanks, &all);
  const std::vector<absl::Status> status = RunThreadRanks(
      kRanks, [&](int64_t r, ProcessGroup* group) { return by_rank[r].AllReduce(group); });
  if (absl::IsUnimplemented(status[0])) GTEST_SKIP() << status[0];
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
    ExpectSameStats(by_rank[r], all);
  }
}

}  // namespace
}  // namespace lightrl
