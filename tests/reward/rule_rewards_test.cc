#include "reward/answer_parsers.h"
#include "reward/countdown_reward.h"
#include "reward/format_reward.h"
#include "reward/length_reward.h"
#include "reward/math_reward.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"

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

struct AnswerPair {
  const char* answer;
  const char* ground_truth;
};

// Equivalent answers as models write them against the way datasets state them.
TEST(RuleRewardsTest, EquivalentAnswersMatch) {
  const AnswerPair kPairs[] = {
      // fractions, decimals, LaTeX fraction commands, mixed numbers
      {"\\frac{1}{2}", "0.5"}, {"\\dfrac{1}{2}", "1/2"}, {"\\tfrac12", "0.5"},
      {"\\frac{3}{4}", "\\frac{6}{8}"}, {"-\\frac{1}{4}", "-0.25"}, {"\\frac{-1}{4}", "-.25"},
      {"2\\frac{1}{2}", "2.5"}, {"-1\\frac{1}{4}", "-1.25"}, {"\\frac{10}{4}", "5/2"},
      {"\\left(\\frac{3}{4}\\right)", "0.75"}, {"10", "10.0"}, {"0.1+0.2", "0.3"},
      // radicals, pi, e, powers, implicit multiplication
      {"2\\sqrt{2}", "\\sqrt{8}"}, {"\\sqrt{2}/2", "\\frac{1}{\\sqrt{2}}"},
      {"\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2"}, {"3\\sqrt{3}", "\\sqrt{27}"},
      {"\\sqrt[3]{8}", "2"}, {"\\sqrt{2}^2", "2"}, {"\\frac{\\pi}{2}", "pi/2"},
      {"\\frac{\\pi}{2}", "\\pi/2"}, {"2\\pi", "2pi"}, {"\\pi r^2", "r^2\\pi"},
      {"\xCF\x80/2", "\\frac{\\pi}{2}"}, {"\xE2\x88\x9A" "2", "\\sqrt{2}"},
      {"e^{2}", "e^2"}, {"2^{10}", "1024"}, {"2^{-1}", "0.5"}, {"3 \\cdot 4", "12"},
      {"3 \\times 4", "12"}, {"12 \\div 4", "3"}, {"2**3", "8"}, {"\\mathrm{e}", "e"},
      // percentages
      {"50\\%", "0.5"}, {"50%", "50"}, {"12.5\\%", "\\frac{1}{8}"}, {"0.5", "50\\%"},
      {"25 percent", "25"},
      // scientific notation
      {"1.5 \\times 10^{3}", "1500"}, {"1.5e3", "1500"}, {"6.02 \\times 10^{23}", "6.02e23"},
      {"2.5\\cdot 10^{-3}", "0.0025"}, {"3E-2", "0.03"},
      // tuples, intervals, sets, bare lists
      {"(1, 2)", "\\left( 1, 2 \\right)"}, {"(\\frac{1}{2}, 3)", "(0.5, 3)"},
      {"[1, 2)", "\\left[1,2\\right)"}, {"(-\\infty, 2]", "(-\\infty,2]"},
      {"(-\xE2\x88\x9E, 0)", "(-\\infty, 0)"}, {"\\{1, 2, 3\\}", "\\{3, 2, 1\\}"},
      {"1, 2", "2, 1"}, {"(2, 3)", "2, 3"}, {"x \\in [1, 2]", "[1,2]"},
      {"(\\sqrt{2}, -\\sqrt{2})", "(\\sqrt 2, -\\sqrt{2})"},
      // degrees, units, currency, thousands separators
      {"30^\\circ", "30"}, {"30^{\\circ}", "30"}, {"30\xC2\xB0", "30"}, {"5\\text{ cm}", "5"},
      {"12 dollars", "12"}, {"\\$12.50", "12.5"}, {"4 \\text{ m}^2", "4"},
      {"3\\text{ apples}", "3"}, {"3 square feet", "3"}, {"2.5 \\text{km}", "2.5"},
      {"1,000,000", "1000000"}, {"1{,}000", "1000"},
      {"1\\,000", "1000"}, {"\\boxed{7}", "7"}, {"$7$", "7"}, {"\\(7\\)", "7"},
      {"\xE2\x88\x92" "3", "-3"},
      // equations and expressions in variables
      {"x = 5", "5"}, {"y = 2x + 1", "2x+1"}, {"2x+1", "1+2x"}, {"x^2-1", "(x-1)(x+1)"},
      {"\\frac{x+1}{2}", "(x+1)/2"}, {"\\frac{a}{b}", "a/b"}, {"2(x+3)", "2x+6"},
      // text answers
      {"\\text{Yes}", "yes"}, {"\\textbf{(B)}", "(b)"}, {"Monday", "monday"},
  };
  for (const AnswerPair& pair : kPairs) {
    EXPECT_TRUE(AnswersMatch(pair.answer, pair.ground_truth))
        << pair.answer << " vs " << pair.ground_truth;
    EXPECT_TRUE(AnswersMatch(pair.ground_truth, pair.answer))
        << pair.ground_truth << " vs " << pair.answer;
  }
}

TEST(RuleRewardsTest, DifferentAnswersDoNotMatch) {
  const AnswerPair kPairs[] = {
      {"\\frac{1}{3}", "0.33"}, {"2\\sqrt{2}", "\\sqrt{6}"}, {"\\frac{\\pi}{2}", "\\frac{\\pi}{3}"},
      {"e", "2.718"}, {"(1, 2)", "(2, 1)"}, {"[1, 2]", "(1, 2)"}, {"[1, 2)", "[1, 2]"},
      {"1, 2", "1, 2, 3"}, {"(1, 2)", "12"}, {"1,2", "12"}, {"2x+1", "2x-1"}, {"x+1", "y+1"},
      {"x^2", "2x"}, {"yes", "no"}, {"no", "on"}, {"50%", "5"}, {"1.5e3", "150"},
      {"5 cm", "6"}, {"2\\frac{1}{2}", "1"}, {"\\infty", "-\\infty"}, {"1/0", "0"},
      {"\\sqrt{-1}", "1"}, {"5.01", "5"}, {"-3", "3"}, {"1000", "100"}, {"", "0"},
      {"\\boxed{}", "0"}, {"\\frac{1}{2}", "\\frac{1}{2}x"}, {"0", "10^{-3}"},
      {"\\unknowncommand{3}", "3"}, {"((((1", "1"},
  };
  for (const AnswerPair& pair : kPairs) {
    EXPECT_FALSE(AnswersMatch(pair.answer, pair.ground_truth))
        << pair.answer << " vs " << pair.ground_truth;
    EXPECT_FALSE(AnswersMatch(pair.ground_truth, pair.answer))
        << pair.ground_truth << " vs " << pair.answer;
  }
}

TEST(RuleRewardsTest, MarkerAnswersKeepWholeExpressions) {
  EXPECT_EQ(*ExtractFinalAnswer("Answer: (1, 2)"), "(1, 2)");
  EXPECT_EQ(*ExtractFinalAnswer("so the answer is 2\\sqrt{2}."), "2\\sqrt{2}");
  EXPECT_EQ(*ExtractFinalAnswer("The answer is 42 apples because 6 * 7"), "7");
  EXPECT_EQ(*ExtractFinalAnswer("#### 3/4"), "3/4");
  EXPECT_EQ(MathReward("Halving gives... The answer is $\\frac{1}{2}$.", "0.5").score, 1.0);
  EXPECT_EQ(MathReward("so \\boxed{\\dfrac{\\pi}{2}}", "\\frac{\\pi}{2}").score, 1.0);
  EXPECT_EQ(MathReward("so \\boxed{\\left(1, \\frac{1}{2}\\right)}", "(1, 0.5)").score, 1.0);
  EXPECT_EQ(MathReward("Answer: 75\\%", "0.75").score, 1.0);
  EXPECT_EQ(MathReward("so \\boxed{2\\sqrt{3}}", "\\sqrt{11}").score, 0.0);
}

// Answers nested or sized to hurt a naive parser still get a prompt, finite verdict.
TEST(RuleRewardsTest, HostileAnswersAreRejectedQuickly) {
  const std::string deep = std::string(100000, '(') + "1" + std::string(100000, ')');
  EXPECT_FALSE(AnswersMatch(deep, "1"));
  const std::string fracs = [] {
    std::string s;
    for (int i = 0; i < 5000; ++i) s += "\\frac{";
    return s + "1" + std::string(5000, '}');
  }();
  EXPECT_FALSE(AnswersMatch(fracs, "1"));
  std::string texts;
  for (int i = 0; i < 20000; ++i) texts += "\\text{a}";
  EXPECT_FALSE(AnswersMatch(texts, "1"));
  EXPECT_TRUE(AnswersMatch(texts, texts));
  EXPECT_FALSE(AnswersMatch(std::string(300, '-') + "1", "-1"));
}

TEST(RuleRewardsTest, RandomFractionsMatchTheirDecimals) {
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    const int num = static_cast<int>(rng() % 199) - 99, den = static_cast<int>(rng() % 63) + 1;
    const std::string decimal = absl::StrFormat("%.12f", static_cast<double>(num) / den);
    const std::string frac = absl::StrFormat("\\frac{%d}{%d}", num, den);
    EXPECT_TRUE(AnswersMatch(frac, decimal)) << frac << " vs " << decimal;
    EXPECT_TRUE(AnswersMatch(absl::StrFormat("%d/%d", num, den), frac));
    const std::string off = absl::StrFormat("%.12f", static_cast<double>(num + 1) / den);
    EXPECT_FALSE(AnswersMatch(frac, off)) << frac << " vs " << off;
  }
}

TEST(RuleRewardsTest, DefaultFormatWantsReasoningThenAnAnswer) {
  absl::StatusOr<FormatChecker> checker = FormatChecker::Create();
  ASSERT_TRUE(checker.ok()) << checker.status();
  for (const char* good :
       {"2 + 2 = 4, so \\boxed{4}", "Let me think.\nAnswer: 7", "Adding: The answer is 12.",
        "work\n#### 18", "We expand.\n\nANSWER: (1, 2)"}) {
    EXPECT_EQ(FormatReward(good, *checker).score, 1.0) << good;
  }
  for (const char* bad : {"\\boxed{4}", "Answer: 7", "I am not sure.", "so \\boxed{ }",
                          "", "thinking... answer:   "}) {
    EXPECT_EQ(FormatReward(bad, *checker).score, 0.0) << bad;
  }
  const RewardResult r = FormatReward("x \\boxed{1}", *checker);
  ASSERT_EQ(r.components.size(), 1u);
  EXPECT_EQ(r.components[0].first, "format");
  // Linear-time matching: a long response costs one pass, not a blown stack.
  EXPECT_EQ(FormatReward(std::string(4 << 20, 'a') + " answer: 1", *checker).score, 1.0);
}

TEST(RuleRewardsTest, CustomFormatPatternsAndTheirErrors) {
  absl::StatusOr<FormatChecker> think = FormatChecker::Create("^<think>(?s).+</think>\\s*\\S");
  ASSERT_TRUE(think.ok()) << think.status();
  EXPECT_TRUE(think->Matches("<think>hmm\nok</think> 42"));
  EXPECT_FALSE(think->Matches("42 <think>hmm</think>"));
  EXPECT_FALSE(think->Matches("<think>hmm</think>"));
  absl::StatusOr<FormatChecker> broken = FormatChecker::Create("answer: (\\d+");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(broken.status().message(), "answer: (\\d+")) << broken.status();
}

TEST(RuleRewardsTest, LengthRewardIsThePenaltyAsAScore) {
  const LengthRewardOptions options{100, 20};
  EXPECT_TRUE(options.Validate().ok());
  EXPECT_EQ(LengthReward(80, options).score, 0.0);
  EXPECT_DOUBLE_EQ(LengthReward(90, options).score, -0.5);
  EXPECT_EQ(LengthReward(500, options).score, -1.0);
  EXPECT_EQ(LengthReward(90, options).components[0].first, "length_penalty");
  EXPECT_FALSE((LengthRewardOptions{0, 0}).Validate().ok());
  EXPECT_FALSE((LengthRewardOptions{100, 200}).Validate().ok());
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

// 40,000 nested parentheses (80 KB) overflowed the countdown parser's stack and killed
// the reward worker with SIGSEGV. Too deep or too long is now a malformed answer: 0.
TEST(RuleRewardsTest, CountdownHostileExpressionsScoreZero) {
  const std::string truth = "target: 7; numbers: 3 4";
  const std::string deep = std::string(40000, '(') + "3 + 4" + std::string(40000, ')');
  absl::StatusOr<RewardResult> r = CountdownReward("Answer: " + deep, truth);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->score, 0.0);
  EXPECT_FALSE(EvaluateExpression(deep, nullptr).has_value());
  // Unclosed, and a long run of unary minus signs: the other two recursive paths.
  EXPECT_FALSE(EvaluateExpression(std::string(40000, '(') + "3", nullptr).has_value());
  EXPECT_FALSE(EvaluateExpression(std::string(40000, '-') + "3", nullptr).has_value());
  r = CountdownReward("Answer: " + std::string(40000, '-') + "3 + 4", truth);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->score, 0.0);
  // Flat but longer than any real answer.
  std::string wide = "3 + 4";
  while (wide.size() <= kMaxCountdownExpressionChars) wide += " + 0";
  EXPECT_FALSE(EvaluateExpression(wide, nullptr).has_value());

  // Reasonable nesting still evaluates, right up to the bound.
  const int ok_depth = kMaxCountdownExpressionDepth - 1;
  const std::string nested = std::string(ok_depth, '(') + "3 + 4" + std::string(ok_depth, ')');
  r = CountdownReward("Answer: " + nested, truth);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->score, 1.0);
  const int too_deep = kMaxCountdownExpressionDepth + 1;
  EXPECT_FALSE(EvaluateExpression(std::string(too_deep, '(') + "3 + 4" + std::string(too_deep, ')'),
                                  nullptr)
                   .has_value());
}

// The math reward's extraction and normaliser on the same inputs, through the full path a
// response takes (\boxed, an answer marker, the bare text).
TEST(RuleRewardsTest, MathHostileResponsesScoreZero) {
  const std::string deep = std::string(40000, '(') + "1" + std::string(40000, ')');
  const std::string braces = std::string(40000, '{') + "1" + std::string(40000, '}');
  for (const std::string& response :
       {"\\boxed{" + deep + "}", "Answer: " + deep, deep, "\\boxed{" + braces + "}",
        "\\boxed{" + std::string(40000, '{'), "The answer is " + std::string(40000, '-') + "1",
        "\\boxed{" + std::string(40000, '[') + "1" + std::string(40000, ']') + "}"}) {
    EXPECT_EQ(MathReward(response, "2").score, 0.0) << response.substr(0, 40);
  }
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
