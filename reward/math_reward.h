// The "math" and "arithmetic" kinds: 1 when the response's final answer matches the
// ground truth (reward/answer_parsers.h), else 0. No options. Torch- and protobuf-free.
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "reward/reward_registry.h"

namespace lightrl {

// 1 when the extracted final answer matches the ground truth, else 0; components
// "correct" and "has_answer".
RewardResult MathReward(absl::string_view response, absl::string_view ground_truth);

// The registry's rows: the same scoring under the name `name` ("math", "arithmetic").
RewardKind MathRewardKind(std::string name);

}  // namespace lightrl
