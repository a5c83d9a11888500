// The "length" kind: DAPO's soft length penalty as a reward, 0 up to max_length -
// buffer, then down to -1 at max_length. Options: max_length, buffer. Torch- and
// protobuf-free.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "reward/reward_registry.h"

namespace lightrl {

struct LengthRewardOptions {
  // The length at which the penalty reaches -1; > 0.
  int64_t max_length = 16384;
  // The penalty ramps from 0 at max_length - buffer down to -1 at max_length; in
  // [0, max_length]. 0 disables the penalty.
  int64_t buffer = 4096;

  absl::Status Validate() const;
};

// LengthPenalty of `length` (tokens when the caller knows them, else bytes) as a reward;
// component "length_penalty".
RewardResult LengthReward(int64_t length, const LengthRewardOptions& options);

// DAPO-style soft length penalty: 0 up to max_len - buffer, then linearly down to -1 at
// max_len.
double LengthPenalty(int64_t length, int64_t max_len, int64_t buffer);

// The registry's row. The kind measures a response in tokens when the item's metadata
// has "response_tokens" (the rollout knows them), else in bytes.
RewardKind LengthRewardKind();

}  // namespace lightrl
