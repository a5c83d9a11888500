// Fuzz target: the math reward's answer extraction and normaliser (ExtractFinalAnswer,
// AnswersMatch, MathReward) on raw responses. Every input gets a 0 or 1 verdict.
#include <string>

#include "reward/answer_parsers.h"
#include "reward/math_reward.h"
#include "tests/fuzz/fuzz_target.h"

namespace lightrl::fuzz {

std::vector<std::string> Seeds() {
  return {"so we get \\boxed{\\frac{3}{4}} done",
          "#### 1,024",
          "The answer is $\\left(1, \\frac{1}{2}\\right)$.",
          "Answer: 2\\sqrt{3} cm",
          "x = \\dfrac{\\pi}{2}",
          "\\boxed{\\{1, 2, 3\\}}",
          "Answer: [0, \\infty)",
          "the answer is 50\\%",
          "\\boxed{2\\frac12}",
          "\\boxed{\\sqrt[3]{27}}",
          "Answer: 3x^2 + 2x - 1",
          "\\boxed{\\text{(A)}}"};
}

}  // namespace lightrl::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::optional<std::string> answer = lightrl::ExtractFinalAnswer(input);
  if (answer && answer->size() > input.size()) {
    lightrl::fuzz::Fail("the extracted answer is longer than the response", input);
  }
  // The input as both a response and a ground truth, against fixed answers.
  for (const char* truth : {"0.75", "(1, 0.5)", "x^2"}) {
    const double score = lightrl::MathReward(input, truth).score;
    if (score != 0.0 && score != 1.0) lightrl::fuzz::Fail("math score outside {0, 1}", input);
    lightrl::AnswersMatch(truth, input);
  }
  if (answer) lightrl::AnswersMatch(*answer, *answer);
  return 0;
}
