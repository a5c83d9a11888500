#include "reward/math_reward.h"

#include <memory>
#include <optional>
#include <utility>

#include "reward/answer_parsers.h"

namespace lightrl {
namespace {

class MathRewardFunction final : public RewardFunction {
 public:
  explicit MathRewardFunction(std::string kind) : kind_(std::move(kind)) {}
  std::string Kind() const override { return kind_; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    return MathReward(input.response, input.ground_truth);
  }

 private:
  std::string kind_;
};

}  // namespace

RewardResult MathReward(absl::string_view response, absl::string_view ground_truth) {
  RewardResult r;
  std::optional<std::string> answer = ExtractFinalAnswer(response);
  r.score = answer && AnswersMatch(*answer, ground_truth) ? 1.0 : 0.0;
  r.components = {{"correct", r.score}, {"has_answer", answer ? 1.0 : 0.0}};
  return r;
}

RewardKind MathRewardKind(std::string name) {
  const std::string help =
      name == "arithmetic"
          ? "final-answer match, as math (kept as the toy task's name)"
          : "final-answer match: numeric and symbolic equivalence, tuples, sets, units";
  return DefineRewardKind<NoRewardOptions>(
      name, help, {}, [name](const NoRewardOptions&) -> absl::StatusOr<RewardFunctionPtr> {
        return std::make_unique<MathRewardFunction>(name);
      });
}

}  // namespace lightrl
