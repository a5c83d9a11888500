#include "reward/reward_function.h"

#include <utility>

#include "absl/strings/str_cat.h"

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

class CountdownRewardFunction final : public RewardFunction {
 public:
  std::string Kind() const override { return "countdown"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    return CountdownReward(input.response, input.ground_truth);
  }
};

}  // namespace

absl::StatusOr<RewardFunctionPtr> MakeBuiltinRewardFunction(absl::string_view kind) {
  if (kind == "math" || kind == "arithmetic") {
    return std::make_unique<MathRewardFunction>(std::string(kind));
  }
  if (kind == "countdown") return std::make_unique<CountdownRewardFunction>();
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown reward kind \"", kind, "\"; built-in kinds: math, arithmetic, countdown"));
}

}  // namespace lightrl
