#include "reward/countdown_reward.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "reward/answer_parsers.h"

namespace lightrl {
namespace {

class CountdownRewardFunction final : public RewardFunction {
 public:
  std::string Kind() const override { return "countdown"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    return CountdownReward(input.response, input.ground_truth);
  }
};

}  // namespace

absl::StatusOr<RewardResult> CountdownReward(absl::string_view response,
                                             absl::string_view ground_truth) {
  // "target: 24; numbers: 3 4 6 1"
  double target = 0;
  std::vector<double> numbers;
  bool have_target = false, have_numbers = false;
  for (absl::string_view part : absl::StrSplit(ground_truth, ';')) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(part, absl::MaxSplits(':', 1));
    absl::string_view key = absl::StripAsciiWhitespace(kv.first);
    absl::string_view value = absl::StripAsciiWhitespace(kv.second);
    if (key == "target") {
      have_target = absl::SimpleAtod(value, &target);
    } else if (key == "numbers") {
      for (absl::string_view n : absl::StrSplit(value, ' ', absl::SkipEmpty())) {
        double v;
        if (!absl::SimpleAtod(n, &v)) {
          return absl::InvalidArgumentError(absl::StrCat("countdown ground truth: bad number \"", n, "\""));
        }
        numbers.push_back(v);
      }
      have_numbers = !numbers.empty();
    }
  }
  if (!have_target || !have_numbers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "countdown ground truth must be \"target: N; numbers: a b ...\", got \"", ground_truth, "\""));
  }
  absl::string_view expr = response;
  size_t at = response.rfind("nswer:");
  if (at != absl::string_view::npos) expr = response.substr(at + 6);
  expr = absl::StripAsciiWhitespace(expr.substr(0, expr.find('\n')));
  if (size_t eq = expr.find('='); eq != absl::string_view::npos) expr = expr.substr(0, eq);
  RewardResult r;
  std::vector<double> used;
  auto value = EvaluateExpression(expr, &used);
  bool numbers_ok = value.has_value();
  std::vector<double> pool = numbers;
  for (double u : used) {
    auto it = std::find(pool.begin(), pool.end(), u);
    if (it == pool.end()) {
      numbers_ok = false;
      break;
    }
    pool.erase(it);
  }
  const bool correct = numbers_ok && std::fabs(*value - target) < 1e-9;
  r.score = correct ? 1.0 : numbers_ok ? 0.1 : 0.0;
  r.components = {{"correct", correct ? 1.0 : 0.0}, {"well_formed", numbers_ok ? 1.0 : 0.0}};
  return r;
}

RewardKind CountdownRewardKind() {
  return DefineRewardKind<NoRewardOptions>(
      "countdown",
      "reach \"target: N; numbers: a b ...\" with + - * / (1 right, 0.1 well-formed, 0)", {},
      [](const NoRewardOptions&) -> absl::StatusOr<RewardFunctionPtr> {
        return std::make_unique<CountdownRewardFunction>();
      });
}

}  // namespace lightrl
