// The "countdown" kind: the response's final equation must reach the target with the
// given numbers. No options. Torch- and protobuf-free.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "reward/reward_registry.h"

namespace lightrl {

// Countdown: `ground_truth` is "target: N; numbers: a b c". The response's final
// equation (after "answer:" or the last line) must use each given number at most once
// with + - * / and parentheses and evaluate to the target: 1; a well-formed but wrong
// expression: 0.1; otherwise 0. Errors only for a malformed ground truth. The expression
// is read by EvaluateExpression (reward/answer_parsers.h), within its bounds.
absl::StatusOr<RewardResult> CountdownReward(absl::string_view response,
                                             absl::string_view ground_truth);

// The registry's row.
RewardKind CountdownRewardKind();

}  // namespace lightrl
