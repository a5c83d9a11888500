#include "reward/rule_rewards.h"

#include <gtest/gtest.h>

#include <random>

namespace lightrl {
namespace {

TEST(RuleRewardsTest, ExtractsTheCommittedAnswer) {
  EXPECT_EQ(*ExtractFinalAnswer("so we get \\boxed{\\frac{3}{4}} done"), "\\frac{3}{4}");
  EXPECT_EQ(*ExtractFinalAnswer("12 apples, 5 eaten\n#### 7"), "7");
  EXPECT_EQ(*ExtractFinalAnswer("The answer is 1,024."), "1,024");
  EXPECT_EQ(*ExtractFinalAnswer("first 3 then -15"), "-15");
  EXPECT_FALSE(ExtractFinalAnswer("no digits here").has_value());
}

TEST(RuleRewardsTest, MatchesNumbersAfterNormalisation) {
  EXPECT_TRUE(AnswersMatch("1,024", "1024"));
  EXPECT_TRUE(AnswersMatch("\\frac{3}{4}", "0.75"));
  EXPECT_TRUE(AnswersMatch("3/4", "0.75"));
  EXPECT_TRUE(AnswersMatch("$5.00", "5"));
  EXPECT_FALSE(AnswersMatch("5.01", "5"));
  EXPECT_FALSE(AnswersMatch("", "5"));
}

TEST(RuleRewardsTest, RandomSumsScoreExactlyWhenRight) {
  std::mt19937 rng(std::random_device{}());
  for (int i = 0; i < 200; ++i) {
    const int a = static_cast<int>(rng() % 1000), b = static_cast<int>(rng() % 1000);
    const std::string truth = std::to_string(a + b);
    EXPECT_EQ(MathReward("Answer: " + truth, truth).score, 1.0);
    EXPECT_EQ(MathReward("Answer: " + std::to_string(a + b + 1), truth).score, 0.0);
  }
}

TEST(RuleRewardsTest, CountdownChecksNumbersAndValue) {
  auto r = CountdownReward("Answer: (6 - 4) * (3 + 9)", "target: 24; numbers: 3 4 6 9");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->score, 1.0);
  r = CountdownReward("Answer: 6 * 4", "target: 24; numbers: 3 4 6 9");
  EXPECT_EQ(r->score, 1.0);
  r = CountdownReward("Answer: 6 * 6 - 12", "target: 24; numbers: 3 4 6 9");  // reuses 6
  EXPECT_EQ(r->score, 0.0);
  r = CountdownReward("Answer: 3 + 4", "target: 24; numbers: 3 4 6 9");
  EXPECT_DOUBLE_EQ(r->score, 0.1);
  EXPECT_FALSE(CountdownReward("Answer: 3", "numbers: 3").ok());
  EXPECT_FALSE(EvaluateExpression("1 / (2 - 2)", nullptr).has_value());
  EXPECT_FALSE(EvaluateExpression("(1 + 2", nullptr).has_value());
}

TEST(RuleRewardsTest, LengthPenaltyRampsInTheBuffer) {
  EXPECT_EQ(LengthPenalty(50, 100, 20), 0.0);
  EXPECT_EQ(LengthPenalty(80, 100, 20), 0.0);
  EXPECT_DOUBLE_EQ(LengthPenalty(90, 100, 20), -0.5);
  EXPECT_EQ(LengthPenalty(100, 100, 20), -1.0);
  EXPECT_EQ(LengthPenalty(100, 100, 0), 0.0);
}

}  // namespace
}  // namespace lightrl
