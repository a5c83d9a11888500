#include "rl/learner_stats.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/status.h"

namespace lightrl {

namespace {

using Field = double LearnerStatsAccumulator::*;

// The fields reduced by a sum; the one list Merge and AllReduce both read.
constexpr Field kSummed[] = {
    &LearnerStatsAccumulator::entropy_sum,        &LearnerStatsAccumulator::entropy_tokens,
    &LearnerStatsAccumulator::rollout_abs_diff_sum, &LearnerStatsAccumulator::rollout_kl_sum,
    &LearnerStatsAccumulator::rollout_tokens,     &LearnerStatsAccumulator::loss,
    &LearnerStatsAccumulator::policy_loss,        &LearnerStatsAccumulator::aux_loss,
    &LearnerStatsAccumulator::loss_tokens,        &LearnerStatsAccumulator::clip_fraction_sum,
    &LearnerStatsAccumulator::ratio_sum,          &LearnerStatsAccumulator::clipped_weight_sum,
    &LearnerStatsAccumulator::approx_kl_sum,      &LearnerStatsAccumulator::truncated_is_weight_sum,
};

}  // namespace

void LearnerStatsAccumulator::AddLossTokens(const LossTokenStats& s) {
  const double w = s.num_tokens;
  loss_tokens += w;
  clip_fraction_sum += w * s.clip_fraction;
  ratio_sum += w * s.ratio_mean;
  clipped_weight_sum += w * s.clipped_weight_mean;
  approx_kl_sum += w * s.approx_kl;
  truncated_is_weight_sum += w * s.truncated_is_weight_mean;
  if (w > 0) {
    ratio_min = std::min(ratio_min, s.ratio_min);
    ratio_max = std::max(ratio_max, s.ratio_max);
  }
}

void LearnerStatsAccumulator::Merge(const LearnerStatsAccumulator& other) {
  for (Field f : kSummed) this->*f += other.*f;
  ratio_min = std::min(ratio_min, other.ratio_min);
  ratio_max = std::max(ratio_max, other.ratio_max);
  rollout_abs_diff_max = std::max(rollout_abs_diff_max, other.rollout_abs_diff_max);
}

absl::Status LearnerStatsAccumulator::AllReduce(ProcessGroup* group) {
  return Reduce([group](std::vector<double>* v, ReduceOp op) { return group->AllReduce(v, op); });
}

absl::Status LearnerStatsAccumulator::AllReduce(ProcessGroup* group, LayoutGroup over) {
  return Reduce(
      [group, over](std::vector<double>* v, ReduceOp op) { return group->AllReduce(over, v, op); });
}

absl::Status LearnerStatsAccumulator::Reduce(
    const std::function<absl::Status(std::vector<double>*, ReduceOp)>& all_reduce) {
  std::vector<double> sums;
  for (Field f : kSummed) sums.push_back(this->*f);
  RETURN_IF_ERROR(all_reduce(&sums, ReduceOp::kSum));
  for (size_t i = 0; i < sums.size(); ++i) this->*kSummed[i] = sums[i];
  // One MAX reduction for all three extremes: the minimum as the maximum of its negation.
  std::vector<double> extremes{-ratio_min, ratio_max, rollout_abs_diff_max};
  RETURN_IF_ERROR(all_reduce(&extremes, ReduceOp::kMax));
  ratio_min = -extremes[0], ratio_max = extremes[1], rollout_abs_diff_max = extremes[2];
  return absl::OkStatus();
}

void LearnerStatsAccumulator::WriteTo(LearnerStats* stats) const {
  stats->loss = loss;
  stats->policy_loss = policy_loss;
  stats->aux_loss = aux_loss;
  stats->entropy = entropy_tokens > 0 ? entropy_sum / entropy_tokens : 0;
  stats->rollout_logprob_abs_diff = rollout_tokens > 0 ? rollout_abs_diff_sum / rollout_tokens : 0;
  stats->rollout_logprob_abs_diff_max = rollout_abs_diff_max;
  stats->rollout_kl = rollout_tokens > 0 ? rollout_kl_sum / rollout_tokens : 0;
  stats->tokens = static_cast<int64_t>(loss_tokens);
  stats->ratio_min = std::isfinite(ratio_min) ? ratio_min : 0;
  stats->ratio_max = ratio_max;
  if (loss_tokens > 0) {
    stats->clip_fraction = clip_fraction_sum / loss_tokens;
    stats->ratio_mean = ratio_sum / loss_tokens;
    stats->clipped_weight_mean = clipped_weight_sum / loss_tokens;
    stats->approx_kl = approx_kl_sum / loss_tokens;
    stats->truncated_is_weight_mean = truncated_is_weight_sum / loss_tokens;
  }
}

}  // namespace lightrl
