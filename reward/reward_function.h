// The reward-function interface the reward worker serves: one (prompt, response,
// ground truth) in, a finite score out. Owns the interface only; the built-in kinds and
// their factory are in reward/reward_registry.h. Torch-free and protobuf-free (the gRPC
// service translates protos to these structs), so the in-process trainer can use it too.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace lightrl {

struct RewardResult {
  double score = 0;
  std::vector<std::pair<std::string, double>> components;  // named parts of the score
  // Optional human-readable note (a judge model's text, an extracted answer): logged,
  // never parsed; a reward server sends it as ScoreResult.text. Initialised here so that
  // `RewardResult{score, components}` stays a complete initialiser under -Wextra.
  std::string note = {};
};

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

}  // namespace lightrl
