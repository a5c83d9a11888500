#include "reward/length_reward.h"

#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace lightrl {
namespace {

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

double LengthPenalty(int64_t length, int64_t max_len, int64_t buffer) {
  if (buffer <= 0 || length <= max_len - buffer) return 0;
  if (length >= max_len) return -1;
  return -static_cast<double>(length - (max_len - buffer)) / static_cast<double>(buffer);
}

absl::Status LengthRewardOptions::Validate() const {
  if (max_length <= 0 || buffer < 0 || buffer > max_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "length reward: need max_length > 0 and 0 <= buffer <= max_length, got max_length ",
        max_length, ", buffer ", buffer));
  }
  return absl::OkStatus();
}

RewardResult LengthReward(int64_t length, const LengthRewardOptions& options) {
  RewardResult r;
  r.score = LengthPenalty(length, options.max_length, options.buffer);
  r.components = {{"length_penalty", r.score}};
  return r;
}

RewardKind LengthRewardKind() {
  return DefineRewardKind<LengthRewardOptions>(
      "length", "soft length penalty: 0 up to max_length - buffer, then down to -1",
      {OptionField("max_length", &LengthRewardOptions::max_length,
                   "length (tokens, else bytes) at which the penalty reaches -1; > 0"),
       OptionField("buffer", &LengthRewardOptions::buffer,
                   "the ramp's width before max_length, in [0, max_length]; 0 = off")},
      [](const LengthRewardOptions& options) -> absl::StatusOr<RewardFunctionPtr> {
        return std::make_unique<LengthRewardFunction>(options);
      });
}

}  // namespace lightrl
