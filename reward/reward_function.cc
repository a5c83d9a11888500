#include "reward/reward_function.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "reward/code_reward.h"

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

class FormatRewardFunction final : public RewardFunction {
 public:
  explicit FormatRewardFunction(FormatChecker checker) : checker_(std::move(checker)) {}
  std::string Kind() const override { return "format"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    return FormatReward(input.response, checker_);
  }

 private:
  FormatChecker checker_;
};

class LengthRewardFunction final : public RewardFunction {
 public:
  explicit LengthRewardFunction(const LengthRewardOptions& options) : options_(options) {}
  std::string Kind() const override { return "length"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    int64_t length = static_cast<int64_t>(input.response.size());
    if (const auto it = input.metadata.find("response_tokens"); it != input.metadata.end()) {
      if (!absl::SimpleAtoi(it->second, &length) || length < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "length reward: metadata \"response_tokens\" must be a count >= 0, got \"",
            it->second, "\""));
      }
    }
    return LengthReward(length, options_);
  }

 private:
  LengthRewardOptions options_;
};

}  // namespace

absl::Status BuiltinRewardOptions::Validate() const {
  if (absl::Status status = length.Validate(); !status.ok()) return status;
  return FormatChecker::Create(format_pattern).status();
}

absl::StatusOr<RewardFunctionPtr> MakeBuiltinRewardFunction(absl::string_view kind,
                                                            const BuiltinRewardOptions& options) {
  if (kind == "format") {
    absl::StatusOr<FormatChecker> checker = FormatChecker::Create(options.format_pattern);
    if (!checker.ok()) return checker.status();
    return std::make_unique<FormatRewardFunction>(*std::move(checker));
  }
  if (kind == "length") {
    if (absl::Status status = options.length.Validate(); !status.ok()) return status;
    return std::make_unique<LengthRewardFunction>(options.length);
  }
  return MakeBuiltinRewardFunction(kind);
}

absl::StatusOr<RewardFunctionPtr> MakeBuiltinRewardFunction(absl::string_view kind) {
  if (kind == "math" || kind == "arithmetic") {
    return std::make_unique<MathRewardFunction>(std::string(kind));
  }
  if (kind == "countdown") return std::make_unique<CountdownRewardFunction>();
  if (kind == "code") return MakeCodeRewardFunction();
  if (kind == "format" || kind == "length") {
    return MakeBuiltinRewardFunction(kind, BuiltinRewardOptions{});
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown reward kind \"", kind,
                   "\"; built-in kinds: math, arithmetic, countdown, code, format, length"));
}

}  // namespace lightrl
