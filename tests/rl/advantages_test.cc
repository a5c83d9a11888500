#include "rl/advantages.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace lightrl {
namespace {

TEST(GroupAdvantages, MatchesPopulationStdFormulaOnRandomGroups) {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.5, 2.0);
  for (int size : {2, 3, 8, 16, 64}) {
    std::vector<double> rewards(size);
    for (double& r : rewards) r = normal(rng);
    auto a = GroupAdvantages(rewards);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_EQ(a->size(), rewards.size());
    // Independent oracle: E[R^2] - E[R]^2 (fine for these well-scaled draws).
    double sum = 0, sum_sq = 0;
    for (double r : rewards) {
      sum += r;
      sum_sq += r * r;
    }
    const double mean = sum / size;
    const double std_pop = std::sqrt(sum_sq / size - mean * mean);
    double a_sum = 0, a_sq = 0;
    for (int i = 0; i < size; ++i) {
      EXPECT_NEAR((*a)[i], (rewards[i] - mean) / (std_pop + 1e-6), 1e-9) << "size " << size;
      a_sum += (*a)[i];
      a_sq += (*a)[i] * (*a)[i];
    }
    // Population std normalisation: zero mean and unit (population) variance, up to eps.
    EXPECT_NEAR(a_sum, 0.0, 1e-9);
    EXPECT_NEAR(a_sq / size, 1.0, 1e-5);
  }
}

TEST(GroupAdvantages, BinaryRewardsGivePlusMinusRatios) {
  // 1 of 4 correct: mean 0.25, population std sqrt(3)/4.
  auto a = GroupAdvantages(std::vector<double>{1, 0, 0, 0});
  ASSERT_TRUE(a.ok());
  const double s = std::sqrt(3.0) / 4.0 + 1e-6;
  EXPECT_NEAR((*a)[0], 0.75 / s, 1e-12);
  for (int i = 1; i < 4; ++i) EXPECT_NEAR((*a)[i], -0.25 / s, 1e-12);
}

TEST(GroupAdvantages, EqualRewardsAndSingletonGiveZero) {
  for (const std::vector<double>& g : {std::vector<double>{3, 3, 3}, std::vector<double>{7}}) {
    auto a = GroupAdvantages(g);
    ASSERT_TRUE(a.ok());
    for (double v : *a) EXPECT_EQ(v, 0.0);
  }
}

TEST(GroupAdvantages, RejectsEmptyAndNonFinite) {
  EXPECT_EQ(GroupAdvantages({}).status().code(), absl::StatusCode::kInvalidArgument);
  auto nan = GroupAdvantages(std::vector<double>{1, std::nan(""), 0});
  ASSERT_FALSE(nan.ok());
  EXPECT_NE(nan.status().message().find("reward 1"), absl::string_view::npos)
      << nan.status();
}

TEST(BatchGroupAdvantages, ErrorNamesTheGroupIndex) {
  const double inf = std::numeric_limits<double>::infinity();
  auto bad_nan = BatchGroupAdvantages({{1, 0}, {0, 1}, {0, std::nan("")}});
  ASSERT_FALSE(bad_nan.ok());
  EXPECT_NE(bad_nan.status().message().find("group 2"), absl::string_view::npos)
      << bad_nan.status();
  auto bad_empty = BatchGroupAdvantages({{1, 0}, {}, {1, 1}});
  ASSERT_FALSE(bad_empty.ok());
  EXPECT_NE(bad_empty.status().message().find("group 1"), absl::string_view::npos)
      << bad_empty.status();
  auto bad_inf = BatchGroupAdvantages({{inf, 0}});
  ASSERT_FALSE(bad_inf.ok());
  EXPECT_NE(bad_inf.status().message().find("group 0"), absl::string_view::npos);

  auto good = BatchGroupAdvantages({{1, 0}, {2, 2, 5}});
  ASSERT_TRUE(good.ok());
  ASSERT_EQ(good->size(), 2u);
  EXPECT_EQ((*good)[1], *GroupAdvantages(std::vector<double>{2, 2, 5}));
}

TEST(FilterDegenerateGroups, DropsAllEqualGroupsAndCounts) {
  auto r = FilterDegenerateGroups({{1, 1, 1}, {0, 1, 0}, {0, 0}, {5}, {0.5, 0.25}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kept, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(r->num_dropped, 3);
}

TEST(FilterDegenerateGroups, ToleranceAndBadInput) {
  auto r = FilterDegenerateGroups({{1.0, 1.0 + 1e-9}, {0.0, 0.1}}, 1e-6);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kept, (std::vector<int64_t>{1}));
  EXPECT_EQ(r->num_dropped, 1);
  auto exact = FilterDegenerateGroups({{1.0, 1.0 + 1e-9}});
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ(exact->num_dropped, 0);

  auto nan = FilterDegenerateGroups({{1, 0}, {1, 0}, {1, 0}, {std::nan(""), std::nan("")}});
  ASSERT_FALSE(nan.ok());
  EXPECT_NE(nan.status().message().find("group 3"), absl::string_view::npos) << nan.status();
  auto empty = FilterDegenerateGroups({{}});
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("group 0"), absl::string_view::npos);
  EXPECT_FALSE(FilterDegenerateGroups({{1, 0}}, -1.0).ok());
}

TEST(OverlongFilterMask, MasksOnlyResponsesCutAtTheLimit) {
  OverlongOptions o;
  o.max_response_length = 100;
  std::vector<ResponseEnd> ends = {{50, true}, {100, false}, {100, true}, {99, false}, {0, true}};
  auto m = OverlongFilterMask(ends, o);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(*m, (std::vector<float>{1, 0, 1, 1, 1}));
}

TEST(OverlongFilterMask, BadInput) {
  OverlongOptions o;  // max_response_length 0: invalid.
  std::vector<ResponseEnd> ends = {{5, true}};
  auto bad_opts = OverlongFilterMask(ends, o);
  ASSERT_FALSE(bad_opts.ok());
  EXPECT_NE(bad_opts.status().message().find("max_response_length"), absl::string_view::npos);
  o.max_response_length = 10;
  ends.push_back({-1, false});
  auto bad_len = OverlongFilterMask(ends, o);
  ASSERT_FALSE(bad_len.ok());
  EXPECT_NE(bad_len.status().message().find("response 1"), absl::string_view::npos);
}

TEST(SoftOverlongPenalty, LinearRampInTheBuffer) {
  OverlongOptions o;
  o.max_response_length = 1000;
  o.buffer = 200;
  o.penalty = 1.0;
  // Oracle straight from DAPO: ((L_max - L_cache) - |y|) / L_cache inside the buffer.
  for (int64_t len : {0, 500, 800, 801, 900, 999, 1000, 1001, 5000}) {
    double want = 0.0;
    if (len > 1000) {
      want = -1.0;
    } else if (len > 800) {
      want = (800.0 - static_cast<double>(len)) / 200.0;
    }
    auto p = SoftOverlongPenalty(len, o);
    ASSERT_TRUE(p.ok());
    EXPECT_NEAR(*p, want, 1e-12) << "len " << len;
  }
  o.penalty = 0.5;
  EXPECT_NEAR(*SoftOverlongPenalty(900, o), -0.25, 1e-12);
  o.buffer = 0;
  EXPECT_EQ(*SoftOverlongPenalty(1000, o), 0.0);
}

TEST(SoftOverlongPenalty, RejectsBadOptions) {
  OverlongOptions o;
  o.max_response_length = 100;
  o.buffer = 101;
  auto s = SoftOverlongPenalty(10, o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("overlong.buffer"), absl::string_view::npos);
  o.buffer = 10;
  o.penalty = -1;
  EXPECT_FALSE(SoftOverlongPenalty(10, o).ok());
  o.penalty = 1;
  EXPECT_FALSE(SoftOverlongPenalty(-3, o).ok());
}

ScoredResponse Scored(double reward, double correctness, int64_t tokens, bool stopped) {
  ScoredResponse r;
  r.reward = reward;
  r.correctness = correctness;
  r.end = {tokens, stopped};
  return r;
}

TEST(ComputeGroupSignal, DegeneracyIsJudgedOnCorrectnessNotPenalisedReward) {
  GroupSignalOptions o;
  o.overlong.max_response_length = 16;
  o.overlong.buffer = 8;
  // All wrong; only the soft overlong penalty tells them apart. Training on it would reward
  // the shorter wrong answers: dropped.
  std::vector<ScoredResponse> all_wrong = {Scored(0.0, 0, 4, true), Scored(-0.5, 0, 12, true),
                                           Scored(-1.0, 0, 16, false)};
  auto s = ComputeGroupSignal(all_wrong, o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->dropped);
  // Mixed correctness: kept, advantages from the penalised rewards.
  std::vector<ScoredResponse> mixed = {Scored(1.0, 1, 4, true), Scored(-0.5, 0, 12, true),
                                       Scored(0.0, 0, 5, true)};
  s = ComputeGroupSignal(mixed, o);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->dropped);
  auto adv = GroupAdvantages({1.0, -0.5, 0.0});
  ASSERT_TRUE(adv.ok());
  EXPECT_EQ(s->advantages, *adv);
  EXPECT_EQ(s->keep, std::vector<float>({1, 1, 1}));
  // Dynamic sampling off: the group is kept, the penalty alone ranking its answers.
  o.dynamic_sampling = false;
  s = ComputeGroupSignal(all_wrong, o);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->dropped);
  EXPECT_EQ(s->advantages.size(), 3u);
}

TEST(ComputeGroupSignal, OverlongFilterMasksOnlyTruncatedResponses) {
  GroupSignalOptions o;
  o.overlong.max_response_length = 8;
  o.overlong_filter = true;
  std::vector<ScoredResponse> g = {Scored(1, 1, 8, false), Scored(0, 0, 8, true),
                                   Scored(0, 0, 3, true), Scored(1, 1, 9, false)};
  auto s = ComputeGroupSignal(g, o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->keep, std::vector<float>({0, 1, 1, 0}));
  o.overlong_filter = false;
  s = ComputeGroupSignal(g, o);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->keep, std::vector<float>({1, 1, 1, 1}));
  // Bad input names what is wrong.
  g[2].reward = std::nan("");
  EXPECT_FALSE(ComputeGroupSignal(g, o).ok());
  EXPECT_FALSE(ComputeGroupSignal({}, o).ok());
}

}  // namespace
}  // namespace lightrl
