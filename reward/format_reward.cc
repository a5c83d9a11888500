#include "reward/format_reward.h"

#include "absl/strings/str_cat.h"
#include "re2/re2.h"

namespace lightrl {
namespace {

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

}  // namespace

absl::StatusOr<FormatChecker> FormatChecker::Create(absl::string_view pattern) {
  if (pattern.empty()) pattern = kDefaultFormatPattern;
  re2::RE2::Options options;
  options.set_log_errors(false);
  auto regex = std::make_shared<const re2::RE2>(re2::StringPiece(pattern.data(), pattern.size()),
                                                options);
  if (!regex->ok()) {
    return absl::InvalidArgumentError(absl::StrCat("format reward: pattern \"", pattern,
                                                   "\" is not a valid RE2 regex: ",
                                                   regex->error()));
  }
  return FormatChecker(std::move(regex));
}

bool FormatChecker::Matches(absl::string_view response) const {
  return re2::RE2::PartialMatch(re2::StringPiece(response.data(), response.size()), *regex_);
}

const std::string& FormatChecker::pattern() const { return regex_->pattern(); }

RewardResult FormatReward(absl::string_view response, const FormatChecker& checker) {
  RewardResult r;
  r.score = checker.Matches(response) ? 1.0 : 0.0;
  r.components = {{"format", r.score}};
  return r;
}

absl::Status FormatRewardOptions::Validate() const {
  return FormatChecker::Create(pattern).status();
}

RewardKind FormatRewardKind() {
  return DefineRewardKind<FormatRewardOptions>(
      "format", "1 when the response matches an RE2 pattern, else 0",
      {OptionField("pattern", &FormatRewardOptions::pattern,
                   "RE2 pattern required somewhere in the response; empty = reasoning, "
                   "then a committed final answer")},
      [](const FormatRewardOptions& options) -> absl::StatusOr<RewardFunctionPtr> {
        absl::StatusOr<FormatChecker> checker = FormatChecker::Create(options.pattern);
        if (!checker.ok()) return checker.status();
        return std::make_unique<FormatRewardFunction>(*std::move(checker));
      });
}

}  // namespace lightrl
