// The learner's statistics: LearnerStats, what one TrainRl / TrainSft call reports, and
// the accumulator that every rank fills during the call and that is reduced over the ranks
// once, by name. Torch-free; it owns the arithmetic of the reported means, not the loss
// (rl/losses.h) nor the collectives' transport (rl/distributed.h).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "rl/distributed.h"

namespace lightrl {

struct LearnerStats {
  double loss = 0, policy_loss = 0, aux_loss = 0, grad_norm = 0, lr = 0;
  double clip_fraction = 0, ratio_mean = 0, ratio_min = 0, ratio_max = 0;
  double clipped_weight_mean = 0, approx_kl = 0, entropy = 0;
  // The train/inference mismatch over tokens with engine logprobs: mean and max
  // |log pi_old - log pi_rollout|, and the k3 estimate of KL(pi_rollout || pi_old).
  double rollout_logprob_abs_diff = 0, rollout_logprob_abs_diff_max = 0, rollout_kl = 0;
  // Mean truncated-IS weight min(pi_old / pi_rollout, cap) (1 when off).
  double truncated_is_weight_mean = 1;
  int64_t tokens = 0, updates = 0;
  // Data parallel, this rank: gradient buckets all-reduced, and how many of them were
  // launched from backward (overlapped) rather than after it.
  int64_t grad_buckets = 0, grad_buckets_in_backward = 0;
};

// One minibatch forward's policy-loss statistics, each a mean over its `num_tokens`
// loss tokens (the fields of PolicyLossOutput that the learner reports).
struct LossTokenStats {
  double num_tokens = 0;
  double clip_fraction = 0, ratio_mean = 0, ratio_min = 0, ratio_max = 0;
  double clipped_weight_mean = 0, approx_kl = 0, truncated_is_weight_mean = 0;
};

// Sums (and extremes) of one learner call on one rank. Every field is summed over the ranks
// by AllReduce but the extremes, which take the maximum (ratio_min the minimum); Merge()
// does the same with another accumulator in the same process.
struct LearnerStatsAccumulator {
  // The old-logprob pass over kept response tokens: entropy and the train/inference
  // mismatch, the latter over kept tokens with engine logprobs.
  double entropy_sum = 0, entropy_tokens = 0;
  double rollout_abs_diff_sum = 0, rollout_kl_sum = 0, rollout_tokens = 0;
  double rollout_abs_diff_max = 0;
  // Each update's loss, policy loss and aux loss divided by the updates of the call.
  double loss = 0, policy_loss = 0, aux_loss = 0;
  // Policy-loss statistics weighted by their forward's loss tokens, and those tokens.
  double loss_tokens = 0;
  double clip_fraction_sum = 0, ratio_sum = 0, clipped_weight_sum = 0, approx_kl_sum = 0;
  double truncated_is_weight_sum = 0;
  double ratio_min = std::numeric_limits<double>::infinity(), ratio_max = 0;

  // Adds one forward's policy-loss statistics (extremes only from forwards with tokens).
  void AddLossTokens(const LossTokenStats& s);
  // Folds `other` in as AllReduce folds another rank's.
  void Merge(const LearnerStatsAccumulator& other);
  // A collective: every rank's sums and extremes, on every rank.
  absl::Status AllReduce(ProcessGroup* group);
  // The same over this rank's `over` group of its layout (tensor parallel: the DP group,
  // since the ranks of one TP group hold the same figures).
  absl::Status AllReduce(ProcessGroup* group, LayoutGroup over);
  // The means and extremes into `stats` (loss, policy_loss, aux_loss, entropy, the
  // mismatch figures, tokens and the token-weighted means); the rest is left as it is.
  void WriteTo(LearnerStats* stats) const;

 private:
  absl::Status Reduce(const std::function<absl::Status(std::vector<double>*, ReduceOp)>& all_reduce);
};

}  // namespace lightrl
