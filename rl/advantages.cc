#include "rl/advantages.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace lightrl {
namespace {

absl::Status CheckRewards(absl::Span<const double> rewards) {
  if (rewards.empty()) return absl::InvalidArgumentError("the group has no rewards");
  for (size_t i = 0; i < rewards.size(); ++i) {
    if (!std::isfinite(rewards[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("reward ", i, " is ", rewards[i], ", must be finite"));
    }
  }
  return absl::OkStatus();
}

absl::Status InGroup(size_t group, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("group ", group, ": ", status.message()));
}

}  // namespace

absl::StatusOr<std::vector<double>> GroupAdvantages(absl::Span<const double> rewards) {
  if (absl::Status s = CheckRewards(rewards); !s.ok()) return s;
  const double n = static_cast<double>(rewards.size());
  double mean = 0.0;
  for (double r : rewards) mean += r;
  mean /= n;
  // Two-pass variance: rewards are often 0/1 with a large mean, where E[R^2] - E[R]^2
  // would cancel badly.
  double var = 0.0;
  for (double r : rewards) var += (r - mean) * (r - mean);
  const double std_dev = std::sqrt(var / n);
  std::vector<double> advantages;
  advantages.reserve(rewards.size());
  for (double r : rewards) advantages.push_back((r - mean) / (std_dev + kAdvantageStdEps));
  return advantages;
}

absl::StatusOr<std::vector<std::vector<double>>> BatchGroupAdvantages(
    const std::vector<std::vector<double>>& group_rewards) {
  std::vector<std::vector<double>> out;
  out.reserve(group_rewards.size());
  for (size_t g = 0; g < group_rewards.size(); ++g) {
    absl::StatusOr<std::vector<double>> a = GroupAdvantages(group_rewards[g]);
    if (!a.ok()) return InGroup(g, a.status());
    out.push_back(*std::move(a));
  }
  return out;
}

absl::StatusOr<GroupFilterResult> FilterDegenerateGroups(
    const std::vector<std::vector<double>>& group_rewards, double tolerance) {
  if (!(tolerance >= 0.0) || !std::isfinite(tolerance)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dynamic sampling tolerance must be finite and >= 0, got ", tolerance));
  }
  GroupFilterResult result;
  for (size_t g = 0; g < group_rewards.size(); ++g) {
    const std::vector<double>& rewards = group_rewards[g];
    if (absl::Status s = CheckRewards(rewards); !s.ok()) return InGroup(g, s);
    const auto [lo, hi] = std::minmax_element(rewards.begin(), rewards.end());
    if (*hi - *lo <= tolerance) {
      ++result.num_dropped;
    } else {
      result.kept.push_back(static_cast<int64_t>(g));
    }
  }
  return result;
}

absl::Status OverlongOptions::Validate() const {
  if (max_response_length <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("overlong.max_response_length must be > 0, got ", max_response_length));
  }
  if (buffer < 0 || buffer > max_response_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("overlong.buffer must be in [0, max_response_length=",
                     max_response_length, "], got ", buffer));
  }
  if (!(penalty >= 0.0) || !std::isfinite(penalty)) {
    return absl::InvalidArgumentError(
        absl::StrCat("overlong.penalty must be finite and >= 0, got ", penalty));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> OverlongFilterMask(absl::Span<const ResponseEnd> responses,
                                                      const OverlongOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::vector<float> mask;
  mask.reserve(responses.size());
  for (size_t i = 0; i < responses.size(); ++i) {
    const ResponseEnd& r = responses[i];
    if (r.num_tokens < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("response ", i, ": num_tokens must be >= 0, got ", r.num_tokens));
    }
    // A response that stopped exactly at the limit ended by itself and keeps its reward.
    const bool truncated = !r.stopped && r.num_tokens >= options.max_response_length;
    mask.push_back(truncated ? 0.0f : 1.0f);
  }
  return mask;
}

absl::StatusOr<double> SoftOverlongPenalty(int64_t num_tokens, const OverlongOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens must be >= 0, got ", num_tokens));
  }
  if (options.buffer == 0) return 0.0;
  const int64_t expected = options.max_response_length - options.buffer;
  if (num_tokens <= expected) return 0.0;
  if (num_tokens > options.max_response_length) return -options.penalty;
  return -options.penalty * static_cast<double>(num_tokens - expected) /
         static_cast<double>(options.buffer);
}

absl::StatusOr<GroupSignal> ComputeGroupSignal(absl::Span<const ScoredResponse> group,
                                               const GroupSignalOptions& options) {
  std::vector<double> rewards, correctness;
  std::vector<ResponseEnd> ends;
  for (const ScoredResponse& r : group) {
    rewards.push_back(r.reward);
    correctness.push_back(r.correctness);
    ends.push_back(r.end);
  }
  GroupSignal signal;
  if (options.dynamic_sampling) {
    ASSIGN_OR_RETURN(GroupFilterResult filtered, FilterDegenerateGroups({correctness}));
    if (filtered.num_dropped > 0) {
      signal.dropped = true;
      return signal;
    }
  }
  ASSIGN_OR_RETURN(signal.advantages, GroupAdvantages(rewards));
  if (options.overlong_filter) {
    ASSIGN_OR_RETURN(signal.keep, OverlongFilterMask(ends, options.overlong));
  } else {
    signal.keep.assign(group.size(), 1.0f);
  }
  return signal;
}

}  // namespace lightrl
