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
// "countdown" (CountdownReward). INVALID_ARGUMENT naming the kind otherwise.
absl::StatusOr<RewardFunctionPtr> MakeBuiltinRewardFunction(absl::string_view kind);

}  // namespace lightrl
