// Built-in rule-based rewards: final-answer extraction and numeric comparison (math,
// arithmetic), countdown expressions, format and length shaping. Torch-free and
// stateless; the reward worker service and the in-process trainer both call these.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lightrl {

struct RewardResult {
  double score = 0;
  std::vector<std::pair<std::string, double>> components;  // named parts of the score
};

// The answer a response commits to: the last \boxed{...}, else what follows the last
// "####" or "answer is", else the last number in the text. nullopt when there is none.
std::optional<std::string> ExtractFinalAnswer(absl::string_view response);

// Numeric equality after normalisation (commas, spaces, $, trailing '.', fractions a/b,
// percentages): relative tolerance 1e-6. Falls back to normalised string equality.
bool AnswersMatch(absl::string_view answer, absl::string_view ground_truth);

// 1 when the extracted final answer matches the ground truth, else 0.
RewardResult MathReward(absl::string_view response, absl::string_view ground_truth);

// Countdown: `ground_truth` is "target: N; numbers: a b c". The response's final
// equation (after "answer:" or the last line) must use each given number at most once
// with + - * / and parentheses and evaluate to the target: 1; a well-formed but wrong
// expression: 0.1; otherwise 0. Errors only for a malformed ground truth.
absl::StatusOr<RewardResult> CountdownReward(absl::string_view response,
                                             absl::string_view ground_truth);

// Evaluates an arithmetic expression over rationals; nullopt on syntax errors or
// division by zero. `numbers_used` receives the literals in order.
std::optional<double> EvaluateExpression(absl::string_view expr, std::vector<double>* numbers_used);

// DAPO-style soft length penalty: 0 up to max_len - buffer, then linearly down to -1 at
// max_len.
double LengthPenalty(int64_t length, int64_t max_len, int64_t buffer);

}  // namespace lightrl
