// The parts of an RL step between generation and the learner: scoring generated groups
// (ScoredGroup, what the step receives whether generation ran in step or ahead of it),
// turning a scored group into the record the step logs and trains on (penalties,
// correctness, dynamic sampling, advantages, token masks), and packing the trained groups
// into the learner's batch. Owns no model, engine, dataset or reward server: generation
// and the reward arrive as results and callables. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "inference_engine/sampling_params.h"
#include "reward/reward_function.h"
#include "rl/advantages.h"
#include "rl/dataset.h"
#include "rl/learner.h"
#include "rl/rollout_log.h"
#include "rl/rollout_source.h"
#include "rl/step_metrics.h"

namespace lightrl {

// The part of a reward that says "right answer": a component named "correct" (or
// "<entry>/correct" from the reward router), else the whole score.
double Correctness(const RewardResult& reward);

// The rewards of a batch: each input's reward, and each reward source's own result for it
// (a reward server or built-in kind, under its name in the config; unweighted), which the
// step logs as reward/<source> and reward/<source>/<component>.
struct BatchRewards {
  std::vector<RewardResult> rewards;                 // [input]
  std::vector<std::string> sources;                  // names
  std::vector<std::vector<RewardResult>> by_source;  // [source][input]
};

// A generated prompt group with each response's text and reward, as the reward returned it
// (no penalties yet).
struct ScoredGroup {
  const Example* example = nullptr;
  GenerationRequest request;    // what was generated: prompt tokens, sampling params
  GroupGeneration generation;   // OK; one weight version for every sample
  std::vector<std::string> texts;       // per sample: the response text the reward read
  std::vector<RewardResult> rewards;    // per sample
  // Each reward source's own result per sample ([source][sample]); empty when the scorer
  // reported none.
  std::vector<std::string> sources;
  std::vector<std::vector<RewardResult>> source_rewards;
};

// The text of generated tokens.
using ResponseDecodeFn = std::function<absl::StatusOr<std::string>(const std::vector<int32_t>&)>;
// Scores a batch: results in input order, by_source rows as long as the batch.
using RewardBatchFn = std::function<absl::StatusOr<BatchRewards>(const std::vector<RewardInput>&)>;

// Scores every response of the generated groups (examples[i] was generated as requests[i]
// into generations[i]) in one call of `score`. A failed generation fails the call with its
// status; a reward batch of the wrong size (or a source row of the wrong size) is INTERNAL.
absl::StatusOr<std::vector<ScoredGroup>> ScoreGroups(const std::vector<const Example*>& examples,
                                                     std::vector<GenerationRequest> requests,
                                                     std::vector<GroupGeneration> generations,
                                                     const ResponseDecodeFn& decode,
                                                     const RewardBatchFn& score);

struct TrainGroupOptions {
  GroupSignalOptions signal;  // dynamic sampling and the overlong filter
  // DAPO's soft overlong penalty, added to each reward (and as the "overlong_penalty"
  // component) when on; signal.overlong holds its length limit.
  bool soft_overlong_penalty = false;
};

// A group the step trains on: the record the rollout log keeps (rewards with penalties,
// advantages) and each response's token mask (0: masked out by the overlong filter).
struct TrainGroup {
  RolloutGroup record;
  std::vector<float> keep;
};

// The record of `scored` for step `step` under `group_id`, with the penalties applied and
// the group's advantages; nullopt when dynamic sampling drops it. Every sample, dropped or
// not, is added to `metrics` with its sources' results, and the group as trained or dropped
// (staleness counted against `learner_version`).
absl::StatusOr<std::optional<TrainGroup>> BuildTrainGroup(const ScoredGroup& scored, int64_t step,
                                                          const std::string& group_id,
                                                          int64_t learner_version,
                                                          const TrainGroupOptions& options,
                                                          RlStepMetrics* metrics);

// The learner's batch: every response of every group, in order, named "<group id>/<k>",
// with the group's prompt, the engine's logprobs, its advantage and its mask.
std::vector<TrainSample> BuildTrainBatch(const std::vector<TrainGroup>& groups);

}  // namespace lightrl
