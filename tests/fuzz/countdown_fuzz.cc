// Fuzz target: the countdown reward's expression parser, through EvaluateExpression and
// the full CountdownReward path a model response takes. A verdict must come back for
// every input and the score must be one of the three the reward defines.
#include <cmath>
#include <string>

#include "reward/answer_parsers.h"
#include "reward/countdown_reward.h"
#include "tests/fuzz/fuzz_target.h"

namespace lightrl::fuzz {

std::vector<std::string> Seeds() {
  return {"(6 - 4) * (3 + 9)", "Answer: 6 * 4", "3 + 4 = 7", "((3))", "-(-3) / 4",
          "1 / (2 - 2)", "(1 + 2", "3 x 4", "2.5 * 0.4", "Answer: (25 - 1) / (3 * 1)\n"};
}

}  // namespace lightrl::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::vector<double> used;
  const std::optional<double> value = lightrl::EvaluateExpression(input, &used);
  if (value && input.size() > lightrl::kMaxCountdownExpressionChars) {
    lightrl::fuzz::Fail("an expression past the length bound was evaluated", input);
  }
  const absl::StatusOr<lightrl::RewardResult> r =
      lightrl::CountdownReward(input, "target: 24; numbers: 3 4 6 9");
  if (!r.ok()) lightrl::fuzz::Fail("a response made the countdown reward fail", input);
  if (r->score != 0.0 && r->score != 0.1 && r->score != 1.0) {
    lightrl::fuzz::Fail("countdown score outside {0, 0.1, 1}", input);
  }
  return 0;
}
