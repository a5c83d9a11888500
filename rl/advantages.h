// Batch-level advantage math for the RL losses: group-relative advantages (GRPO/CISPO),
// DAPO's dynamic sampling (drop groups whose rewards are all equal) and its overlong
// filter and soft overlong penalty. Torch-free plain math over rewards and lengths; it
// owns no tensors and no sampling policy (the controller decides what to do with results).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace lightrl {

// Added to the group's std so that a group of equal rewards gives A = 0, not 0/0.
inline constexpr double kAdvantageStdEps = 1e-6;

// A_i = (R_i - mean(R)) / (std(R) + 1e-6) for one prompt group (DESIGN.md section 5).
// std is the population std (divide by G, not G - 1): the paper's formula takes the std of
// the group's rewards as a set, and a group of 1 then has std 0 and A = 0 instead of a
// division by zero. Errors: an empty group, a non-finite reward (names its index).
absl::StatusOr<std::vector<double>> GroupAdvantages(absl::Span<const double> rewards);

// GroupAdvantages over every group of a batch; an error names the group index
// ("group 3: reward 1 is nan").
absl::StatusOr<std::vector<std::vector<double>>> BatchGroupAdvantages(
    const std::vector<std::vector<double>>& group_rewards);

struct GroupFilterResult {
  // Indices (into the input) of the groups that carry a learning signal, in input order.
  std::vector<int64_t> kept;
  // Groups dropped because all their rewards were equal (within the tolerance).
  int64_t num_dropped = 0;
};

// Dynamic sampling (DAPO; M1 uses it too): a group whose rewards are all equal has A = 0
// for every token, so it adds nothing to the gradient but still counts in the token
// normaliser and dilutes the batch. Drops groups with max(R) - min(R) <= tolerance.
// Errors: an empty group, a non-finite reward, a negative tolerance (naming the group).
absl::StatusOr<GroupFilterResult> FilterDegenerateGroups(
    const std::vector<std::vector<double>>& group_rewards, double tolerance = 0.0);

// How one response ended, as the rollout reports it.
struct ResponseEnd {
  // Generated (response) tokens, the stop token included when there was one.
  int64_t num_tokens = 0;
  // True when generation ended on a stop token/string, false when it ran out of budget.
  bool stopped = false;
};

struct OverlongOptions {
  // The generation limit in response tokens (DAPO's L_max); must be > 0.
  int64_t max_response_length = 0;
  // DAPO's L_cache: the soft penalty ramps from 0 to -penalty over the last `buffer`
  // tokens before max_response_length. 0 disables the soft penalty.
  int64_t buffer = 0;
  // The penalty at (and beyond) max_response_length; DAPO uses 1.
  double penalty = 1.0;

  absl::Status Validate() const;
};

// DAPO overlong filtering: 0 for a response truncated at the length limit (did not stop
// and reached max_response_length), 1 otherwise; multiply it into the response's token
// mask so a cut-off reasoning trace is neither rewarded nor punished for its reward.
// Errors: invalid options, a negative length (naming the response index).
absl::StatusOr<std::vector<float>> OverlongFilterMask(absl::Span<const ResponseEnd> responses,
                                                      const OverlongOptions& options);

// DAPO's soft overlong punishment, added to the reward: 0 up to L_max - buffer, then
// linear down to -penalty at L_max, -penalty beyond. 0 when buffer is 0.
// Errors: invalid options, a negative length.
absl::StatusOr<double> SoftOverlongPenalty(int64_t num_tokens, const OverlongOptions& options);

// One scored response of a prompt group, as the controller has it.
struct ScoredResponse {
  // The reward the advantage is computed from, penalties (soft overlong) included.
  double reward = 0;
  // What dynamic sampling judges a group by: the reward's "correct" component where it has
  // one, else the reward before any penalty. A group of all-wrong answers that only a
  // length penalty tells apart carries no signal about correctness; training on it would
  // reward the shorter wrong answers.
  double correctness = 0;
  ResponseEnd end;
};

struct GroupSignalOptions {
  bool dynamic_sampling = true;  // drop groups whose correctness is all equal
  bool overlong_filter = false;  // mask out responses cut off at the length limit
  OverlongOptions overlong;      // the length limit (read when overlong_filter)
};

// What the controller trains on from one group: dropped (dynamic sampling), else each
// response's advantage and token mask (0: masked out by the overlong filter). The
// controller's live loop and replay both decide through this.
struct GroupSignal {
  bool dropped = false;
  std::vector<double> advantages;
  std::vector<float> keep;
};
absl::StatusOr<GroupSignal> ComputeGroupSignal(absl::Span<const ScoredResponse> group,
                                               const GroupSignalOptions& options);

}  // namespace lightrl
