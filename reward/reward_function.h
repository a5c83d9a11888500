// The reward-function interface the reward worker serves: one (prompt, response,
// ground truth) in, a finite score out. Owns the interface and the factory for the
// built-in kinds; torch-free and protobuf-free (the gRPC service translates protos to
// these structs), so the in-process trainer can use it too.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "reward/rule_rewards.h"

namespace lightrl {

// One sample to score; mirrors lightrl.v1.ScoreItem without the id.
struct RewardInput {
  std::string prompt;
  std::string response;
  std::string ground_truth;
  std::map<std::string, std::string> metadata;  // dataset row extras; unknown keys ignored
};

class RewardFunction {
 public:
  virtual ~RewardFunction() = default;
  // The kind this function implements ("math", ...); reported by Health.
  virtual std::string Kind() const = 0;
  // Scores one sample. Must be thread-safe (the service calls it concurrently) and
  // deterministic. An error means the input cannot be scored (e.g. a malformed ground
  // truth), not that the response is wrong: a wrong response scores low. The service
  // rejects non-finite scores, so implementations need not check for them.
  virtual absl::StatusOr<RewardResult> Score(const RewardInput& input) = 0;
};

using RewardFunctionPtr = std::unique_ptr<RewardFunction>;

// The built-in kinds: "math" and "arithmetic" (final-answer match, MathReward) and
// "countdown" (CountdownReward) and "code" (CodeRewardFunction with default options, which
// runs the response in the sandbox). INVALID_ARGUMENT naming the kind otherwise.
absl::StatusOr<RewardFunctionPtr> MakeBuiltinRewardFunction(absl::string_view kind);

// Settings of the built-in kinds that have any.
struct BuiltinRewardOptions {
  // RE2 pattern the "format" kind requires somewhere in a response; empty =
  // kDefaultFormatPattern (reasoning, then a committed final answer).
  std::string format_pattern;
  // Limits of the "length" kind. It measures a response in tokens when the item's
  // metadata has "response_tokens" (the rollout knows them), else in bytes.
  LengthRewardOptions length;

  absl::Status Validate() const;
};

// MakeBuiltinRewardFunction(kind) with `options` for "format" (FormatReward) and "length"
// (LengthReward); the kinds without settings ignore them. INVALID_ARGUMENT for a bad
// pattern or length limits.
absl::StatusOr<RewardFunctionPtr> MakeBuiltinRewardFunction(absl::string_view kind,
                                                            const BuiltinRewardOptions& options);

}  // namespace lightrl
