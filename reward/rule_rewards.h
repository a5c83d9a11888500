// Built-in rule-based rewards: final-answer extraction and numeric comparison (math,
// arithmetic), countdown expressions, format and length shaping. Torch-free and
// stateless; the reward worker service and the in-process trainer both call these.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace re2 {
class RE2;
}  // namespace re2

namespace lightrl {

struct RewardResult {
  double score = 0;
  std::vector<std::pair<std::string, double>> components;  // named parts of the score
};

// The answer a response commits to: the last \boxed{...}, else what follows the last
// "####", "answer is" or "answer:" on its line (all of it when it reads as a number,
// expression or tuple, else its last number), else the last number in the text. nullopt
// when there is none.
std::optional<std::string> ExtractFinalAnswer(absl::string_view response);

// Equivalence of two final answers, numeric and symbolic after normalisation. Both sides
// lose their LaTeX dressing ($, \boxed, \text{...}, \left/\right, spacing commands,
// degrees, units after a number, "x =" in front, thousands separators); \frac, \dfrac,
// \tfrac, \sqrt, \pi, ^, \cdot and \times become a real expression that is evaluated
// (+ - * / ^, sqrt, pi, e, implicit multiplication, scientific notation; "2\frac12" is a
// mixed number). Values agree within a relative 1e-6; "50\%" matches 50 and 0.5.
// Expressions in single-letter variables match when they agree at three fixed points.
// Bracketed tuples and intervals compare element-wise with their brackets; sets
// (\{...\}) and bare comma lists in any order. Otherwise the normalised strings must be
// equal; an empty side never matches.
bool AnswersMatch(absl::string_view answer, absl::string_view ground_truth);

// 1 when the extracted final answer matches the ground truth, else 0.
RewardResult MathReward(absl::string_view response, absl::string_view ground_truth);

// Countdown: `ground_truth` is "target: N; numbers: a b c". The response's final
// equation (after "answer:" or the last line) must use each given number at most once
// with + - * / and parentheses and evaluate to the target: 1; a well-formed but wrong
// expression: 0.1; otherwise 0. Errors only for a malformed ground truth.
absl::StatusOr<RewardResult> CountdownReward(absl::string_view response,
                                             absl::string_view ground_truth);

// Bounds on a countdown expression read from a response. The parser recurses once per
// parenthesis or unary minus, so an unbounded one let 40,000 '(' overflow the stack;
// no real answer comes near either bound, so a longer or deeper one is malformed (0).
inline constexpr int kMaxCountdownExpressionDepth = 64;
inline constexpr size_t kMaxCountdownExpressionChars = 1024;

// Evaluates an arithmetic expression over rationals; nullopt on syntax errors, division
// by zero, or an expression past the bounds above. `numbers_used` receives the literals
// in order.
std::optional<double> EvaluateExpression(absl::string_view expr, std::vector<double>* numbers_used);

// The "format" reward's default pattern: some reasoning, then a committed final answer
// (\boxed{...}, "answer:", "the answer is" or "####" followed by text).
inline constexpr char kDefaultFormatPattern[] =
    R"((?s)\S.*?(?:\\boxed\{\s*[^\s}]|(?i:answer\s*(?:is|:))\s*\S|####\s*\S))";

// A compiled "format" pattern (RE2 syntax, so matching is linear in the response length
// and cannot blow the stack on 80K-token responses). Cheap to copy; thread-safe.
class FormatChecker {
 public:
  // `pattern` empty: kDefaultFormatPattern. INVALID_ARGUMENT naming the pattern and the
  // RE2 error when it does not compile.
  static absl::StatusOr<FormatChecker> Create(absl::string_view pattern = "");
  // True when the pattern matches somewhere in `response` (anchor it for a full match).
  bool Matches(absl::string_view response) const;
  const std::string& pattern() const;

 private:
  explicit FormatChecker(std::shared_ptr<const re2::RE2> regex) : regex_(std::move(regex)) {}
  std::shared_ptr<const re2::RE2> regex_;
};

// 1 when `checker` matches the response, else 0; component "format".
RewardResult FormatReward(absl::string_view response, const FormatChecker& checker);

struct LengthRewardOptions {
  // The length at which the penalty reaches -1; > 0.
  int64_t max_length = 16384;
  // The penalty ramps from 0 at max_length - buffer down to -1 at max_length; in
  // [0, max_length]. 0 disables the penalty.
  int64_t buffer = 4096;

  absl::Status Validate() const;
};

// LengthPenalty of `length` (tokens when the caller knows them, else bytes) as a reward;
// component "length_penalty".
RewardResult LengthReward(int64_t length, const LengthRewardOptions& options);

// DAPO-style soft length penalty: 0 up to max_len - buffer, then linearly down to -1 at
// max_len.
double LengthPenalty(int64_t length, int64_t max_len, int64_t buffer);

}  // namespace lightrl
