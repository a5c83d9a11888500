#include "rl/step_metrics.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace lightrl {

Scalars LearnerScalars(const LearnerStats& st) {
  return {
      {"loss/total", st.loss},
      {"loss/policy", st.policy_loss},
      {"loss/aux", st.aux_loss},
      {"is/clip_fraction", st.clip_fraction},
      {"is/ratio_mean", st.ratio_mean},
      {"is/ratio_min", st.ratio_min},
      {"is/ratio_max", st.ratio_max},
      {"is/clipped_weight_mean", st.clipped_weight_mean},
      {"policy/entropy", st.entropy},
      {"policy/approx_kl", st.approx_kl},
      {"policy/train_infer_logprob_abs_diff", st.rollout_logprob_abs_diff},
      {"policy/train_infer_logprob_abs_diff_max", st.rollout_logprob_abs_diff_max},
      {"policy/train_infer_kl", st.rollout_kl},
      {"is/truncated_is_weight_mean", st.truncated_is_weight_mean},
      {"optim/grad_norm", st.grad_norm},
      {"optim/lr", st.lr},
  };
}

bool IsReservedRewardSourceName(const std::string& name) {
  return name == "mean" || name == "std" || name == "accuracy" || name == "length_corr";
}

bool RewardMetricNames::Admit(const std::string& name) {
  if (names_.count(name) > 0) return true;
  if (names_.size() < kMaxNames && name.size() <= kMaxNameBytes) {
    names_.insert(name);
    return true;
  }
  if (!warned_) {
    warned_ = true;
    LogWarning("lightrl run: not logging reward metric \"%s\" (%zu bytes): a run logs at most "
               "%zu reward source and component names of at most %zu bytes; later ones are "
               "dropped too",
               absl::CHexEscape(name.substr(0, kMaxNameBytes)), name.size(), kMaxNames,
               kMaxNameBytes);
  }
  return false;
}

void RewardSourceMeans::AddValue(const std::string& name, double value) {
  auto it = index_.find(name);
  if (it == index_.end()) {
    if (!names_->Admit(name)) return;
    it = index_.emplace(name, means_.size()).first;
    means_.push_back({name, Mean()});
  }
  Mean& mean = means_[it->second].second;
  mean.sum += value;
  ++mean.count;
}

void RewardSourceMeans::Add(const std::string& source, const RewardResult& result) {
  AddValue(source, result.score);
  for (const auto& [component, value] : result.components) {
    AddValue(absl::StrCat(source, "/", component), value);
  }
}

Scalars RewardSourceMeans::ToScalars(const std::string& prefix) const {
  Scalars scalars;
  for (const auto& [name, mean] : means_) {
    scalars.push_back({absl::StrCat(prefix, name), mean.sum / static_cast<double>(mean.count)});
  }
  return scalars;
}

void RlStepMetrics::AddSample(double reward, double correctness, int64_t num_tokens) {
  ++num_samples_;
  reward_sum_ += reward;
  reward_sq_sum_ += reward * reward;
  correct_sum_ += correctness;
  length_sum_ += static_cast<double>(num_tokens);
  generated_tokens_ += num_tokens;
}

void RlStepMetrics::Correlation::Add(double length, double score) {
  n += 1;
  x += length;
  y += score;
  xx += length * length;
  yy += score * score;
  xy += length * score;
}

double RlStepMetrics::Correlation::Value() const {
  const double var_x = n * xx - x * x, var_y = n * yy - y * y;
  if (!(var_x > 0) || !(var_y > 0)) return 0;
  return std::clamp((n * xy - x * y) / std::sqrt(var_x * var_y), -1.0, 1.0);
}

void RlStepMetrics::AddRewardLength(const RewardResult& reward, int64_t num_tokens) {
  const double length = static_cast<double>(num_tokens);
  reward_length_.Add(length, reward.score);
  for (const auto& [name, value] : reward.components) {
    const bool judge = name == "judge" ||
                       (name.size() > 6 && name.compare(name.size() - 6, 6, "/judge") == 0);
    if (judge) judge_length_[name].Add(length, value);
  }
}

void RlStepMetrics::AddTrainedGroup(int64_t staleness) {
  ++groups_trained_;
  staleness_sum_ += staleness;
  staleness_max_ = std::max(staleness_max_, staleness);
}

Scalars RlStepMetrics::ToScalars(const LearnerStats& st, double step_seconds,
                                 const Scalars& source_stats,
                                 const std::optional<AsyncRolloutStats>& ahead,
                                 const std::optional<AsyncRolloutStats>& after) const {
  const double n = num_samples_for_means();
  const double mean = reward_sum_ / n;
  const bool async = ahead.has_value() && after.has_value();
  Scalars scalars = {
      {"reward/mean", mean},
      {"reward/std", std::sqrt(std::max(0.0, reward_sq_sum_ / n - mean * mean))},
      {"reward/accuracy", correct_sum_ / n},
      {"response/length_mean", length_sum_ / n},
      {"rollout/groups_trained", static_cast<double>(groups_trained_)},
      {"rollout/groups_dropped", static_cast<double>(groups_dropped_)},
      {"rollout/tokens_per_s",
       generated_tokens_ / std::max(async ? step_seconds : generate_seconds_, 1e-9)},
  };
  for (auto& kv : sources_.ToScalars("reward/")) scalars.push_back(std::move(kv));
  for (auto& kv : LearnerScalars(st)) scalars.push_back(std::move(kv));
  scalars.push_back({"time/step_s", step_seconds});
  scalars.push_back({"time/generate_s", generate_seconds_});
  scalars.push_back({"time/train_s", train_seconds_});
  scalars.push_back({"time/weight_sync_s", weight_sync_seconds_});
  scalars.push_back({"train/tokens_per_s", st.tokens / std::max(train_seconds_, 1e-9)});
  for (const auto& kv : source_stats) scalars.push_back(kv);
  scalars.push_back({"reward/length_corr", reward_length_.Value()});
  for (const auto& [name, corr] : judge_length_) {
    scalars.push_back({absl::StrCat("reward/", name, "/length_corr"), corr.Value()});
  }
  if (async) {
    const double trained = static_cast<double>(std::max<int64_t>(groups_trained_, 1));
    scalars.push_back({"async/staleness_mean", staleness_sum_ / trained});
    scalars.push_back({"async/staleness_max", static_cast<double>(staleness_max_)});
    scalars.push_back({"async/groups_ahead", static_cast<double>(ahead->in_flight + ahead->ready_ahead)});
    scalars.push_back({"async/stale_requeued", static_cast<double>(after->stale_requeued)});
  }
  return scalars;
}

}  // namespace lightrl
