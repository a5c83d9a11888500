// The bounded parsers the rule rewards read model output with: final-answer
// extraction and equivalence (math, arithmetic) and the countdown expression evaluator.
// Pure functions over text; each parser bounds its input's length and nesting so a
// hostile response cannot exhaust the stack (fuzzed in tests/fuzz). Owns no scoring.
// Torch- and protobuf-free.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace lightrl {

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

// Bounds on a countdown expression read from a response. The parser recurses once per
// parenthesis or unary minus, so an unbounded one let 40,000 '(' overflow the stack;
// no real answer comes near either bound, so a longer or deeper one is malformed (0).
inline constexpr int kMaxCountdownExpressionDepth = 64;
inline constexpr size_t kMaxCountdownExpressionChars = 1024;

// Evaluates an arithmetic expression over rationals; nullopt on syntax errors, division
// by zero, or an expression past the bounds above. `numbers_used` receives the literals
// in order.
std::optional<double> EvaluateExpression(absl::string_view expr, std::vector<double>* numbers_used);

}  // namespace lightrl
