// The statistics of one RL step under named fields, and the metric names they are logged
// under (docs/metrics.md): the rollout sums the step collects sample by sample, each
// reward source's means, the phases' wall times, and the scalars built from them and the
// learner's statistics.
// Owns the arithmetic of the step's metrics only; it does not generate, score, train or
// write files. Torch-free.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/metrics.h"
#include "reward/reward_function.h"
#include "rl/async_rollouts.h"
#include "rl/learner.h"

namespace lightrl {

// The learner's statistics of an RL step (or a replayed one) under their metric names.
Scalars LearnerScalars(const LearnerStats& stats);

// Whether reward/<name> is one of the step's own metrics (mean, std, accuracy,
// length_corr), so that a reward source may not be called `name`.
bool IsReservedRewardSourceName(const std::string& name);

// The names a run may log for reward sources (a server's name in reward.servers or a
// built-in kind) and the components they return. Components come from reward servers, so
// their names are bounded: a run logs at most kMaxNames of them (so that metrics.jsonl
// stays readable by `lightrl plot`, whose limit is 4,096), each of at most kMaxNameBytes;
// the first name refused is logged as a warning. Thread-compatible.
class RewardMetricNames {
 public:
  static constexpr size_t kMaxNames = 512;
  static constexpr size_t kMaxNameBytes = 200;
  // Whether `name` may be logged: known already, or new while there is room.
  bool Admit(const std::string& name);

 private:
  std::set<std::string> names_;
  bool warned_ = false;
};

// Means of each reward source's own score (`<prefix><source>`) and of each component it
// returned (`<prefix><source>/<component>`), over the samples that carry them, in the
// order first seen.
class RewardSourceMeans {
 public:
  // `names` (not owned, outlives this) bounds the names logged.
  explicit RewardSourceMeans(RewardMetricNames* names) : names_(names) {}
  void Add(const std::string& source, const RewardResult& result);
  Scalars ToScalars(const std::string& prefix) const;

 private:
  void AddValue(const std::string& name, double value);
  struct Mean {
    double sum = 0;
    int64_t count = 0;
  };
  RewardMetricNames* names_;
  std::vector<std::pair<std::string, Mean>> means_;
  std::map<std::string, size_t> index_;
};

class RlStepMetrics {
 public:
  explicit RlStepMetrics(RewardMetricNames* names) : sources_(names) {}
  // A reward source's own result for one sample (reward/<source>, reward/<source>/<part>).
  void AddSourceReward(const std::string& source, const RewardResult& result) {
    sources_.Add(source, result);
  }
  // A scored sample of the step, trained on or not: its reward (penalties included), its
  // correctness (the "correct" component, else the reward before penalties) and its
  // generated tokens.
  void AddSample(double reward, double correctness, int64_t num_tokens);
  // The length-bias watch of model-based rewards: the Pearson correlation over the step's
  // scored samples between the response length and the reward (reward/length_corr) and
  // each judge model's score (a "judge" or ".../judge" component, the genrm kind's:
  // reward/<component>/length_corr), as MiniMax-M1 monitored its generative reward model.
  void AddRewardLength(const RewardResult& reward, int64_t num_tokens);
  // A group the step trains on, `staleness` learner versions behind the learner.
  void AddTrainedGroup(int64_t staleness);
  // A group dynamic sampling dropped.
  void AddDroppedGroup() { ++groups_dropped_; }

  // Wall time of the phases, in seconds; generation adds up over refill rounds.
  void AddGenerateSeconds(double seconds) { generate_seconds_ += seconds; }
  void SetTrainSeconds(double seconds) { train_seconds_ = seconds; }
  void SetWeightSyncSeconds(double seconds) { weight_sync_seconds_ = seconds; }

  // Means over the scored samples (over 1 when there were none).
  double reward_mean() const { return reward_sum_ / num_samples_for_means(); }
  double accuracy() const { return correct_sum_ / num_samples_for_means(); }
  double length_mean() const { return length_sum_ / num_samples_for_means(); }
  int64_t groups_trained() const { return groups_trained_; }

  // The step's scalars in logging order: rewards, lengths and groups, each reward
  // source's means, the learner's
  // `stats`, phase times (the whole step took `step_seconds`), the rollout source's own
  // `source_stats`, and with async generation its staleness and look-ahead (`ahead`: the
  // generator's counters read before training, `after` after it; both set or neither).
  // Async generation runs beside the step, so its token rate is over the whole step
  // rather than the time spent waiting for groups.
  Scalars ToScalars(const LearnerStats& stats, double step_seconds, const Scalars& source_stats,
                    const std::optional<AsyncRolloutStats>& ahead,
                    const std::optional<AsyncRolloutStats>& after) const;

 private:
  double num_samples_for_means() const { return static_cast<double>(std::max<int64_t>(num_samples_, 1)); }

  int64_t num_samples_ = 0;
  double reward_sum_ = 0, reward_sq_sum_ = 0, correct_sum_ = 0, length_sum_ = 0;
  int64_t generated_tokens_ = 0;
  int64_t groups_trained_ = 0, groups_dropped_ = 0;
  int64_t staleness_sum_ = 0, staleness_max_ = 0;  // over the trained groups
  double generate_seconds_ = 0, train_seconds_ = 0, weight_sync_seconds_ = 0;
  // Sums of (length, score) pairs for a Pearson correlation; 0 while either is constant.
  struct Correlation {
    double n = 0, x = 0, y = 0, xx = 0, yy = 0, xy = 0;
    void Add(double length, double score);
    double Value() const;
  };
  Correlation reward_length_;
  std::map<std::string, Correlation> judge_length_;  // by component name
  RewardSourceMeans sources_;
};

}  // namespace lightrl
