// Async generation for the RL loop: prompt groups are drawn from the dataset and handed to
// a generator ahead of the step that trains on them, so generation of the next batch
// overlaps training of the current one. Owns the drawn-but-untrained groups (in flight,
// being scored or ready), the staleness check, the bounded regeneration of stale groups,
// the scoring threads that score each group as soon as its samples are back, and the
// dataset cursor a checkpoint may save; does not train or publish weights. Torch-free.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "inference_engine/sampling_params.h"
#include "reward/reward_function.h"
#include "rl/dataset.h"
#include "rl/rollout_source.h"

namespace lightrl {

struct AsyncRolloutOptions {
  // Groups one step takes first (rollout.prompts_per_step).
  int64_t prompts_per_step = 16;
  // Versions a group may lag the learner when trained on (rollout.max_staleness).
  int64_t max_staleness = 1;
  // Versions one step adds (algorithm.minibatches: the learner counts updates).
  int64_t versions_per_step = 1;
  // Times one group may be generated again because it came back too stale.
  int64_t max_regenerations = 3;
  // Dataset order: shuffled per epoch with this seed when `shuffle`.
  uint64_t seed = 0;
  bool shuffle = true;
  // Groups scored at once, each on a scoring thread of its own, when the rollouts are
  // given a score function (reward.max_concurrent_groups); >= 1.
  int64_t max_concurrent_scoring = 4;

  // Groups drawn ahead of the trainer: the steps whose generation may start while an
  // earlier step trains, max_staleness / versions_per_step of them, times a step's groups.
  int64_t window() const { return max_staleness / versions_per_step * prompts_per_step; }
  absl::Status Validate() const;
};

// The rewards of one generated group, in sample order: the response text the reward read
// and the reward it returned.
struct GroupScores {
  std::vector<std::string> texts;
  std::vector<RewardResult> rewards;
  // Each reward source's own result per sample ([source][sample]), for the per-source
  // metrics; empty when the score function reports none.
  std::vector<std::string> sources;
  std::vector<std::vector<RewardResult>> source_rewards;
};

// A generated group handed to the trainer, in dataset draw order.
struct AsyncGroup {
  const Example* example = nullptr;
  GenerationRequest request;    // what was generated (prompt tokens, sampling params)
  GroupGeneration generation;   // one weight version for every sample
  int64_t generations = 0;      // times it was generated (1 + stale regenerations)
  bool scored = false;          // `scores` holds its rewards (a score function was given)
  GroupScores scores;
};

struct AsyncRolloutStats {
  int64_t groups_taken = 0;     // handed to the trainer
  int64_t stale_requeued = 0;   // generated again because too stale when taken
  int64_t staleness_sum = 0;    // over the groups taken: learner version - group version
  int64_t staleness_max = 0;
  int64_t in_flight = 0;        // groups being generated now
  int64_t scoring = 0;          // generated, being scored or waiting for a scoring thread
  int64_t ready_ahead = 0;      // generated (and scored), waiting for a later Take
};

// Builds the request of one example (tokenizes the prompt, sets the sampling params and
// `seed`; the id is the caller's). Called on generator threads.
using AsyncRequestFn = std::function<absl::StatusOr<GenerationRequest>(const Example&, uint64_t seed)>;
// Generates requests with weights at least `min_weight_version`, handing each group to
// `on_group` with its request index as soon as it is done, and returns once all were
// handed over (RolloutSource::GenerateEach). Called on generator threads, several at once;
// `on_group` may be called from any thread.
using AsyncGenerateFn = std::function<void(const std::vector<GenerationRequest>&,
                                           int64_t min_weight_version, const GroupCallback& on_group)>;
// Scores a generated group: one result per sample, in sample order. Called on scoring
// threads, up to max_concurrent_scoring at once, in the order the groups came back from
// generation (one by one, not per call); must be thread-safe, and deterministic so that a
// group's rewards do not depend on when or beside what it was scored.
using AsyncScoreFn = std::function<absl::StatusOr<GroupScores>(
    const Example&, const GenerationRequest&, const GroupGeneration&)>;

class AsyncRollouts {
 public:
  // Draws from `dataset` starting at `start` (a checkpoint's cursor). Generation starts
  // with the first Take; new groups use weights at least `published_version`. With
  // `score`, every group generated is scored as soon as it is back from generation (not
  // waiting for the other groups of its call), off the caller's thread, and a Take hands out groups only once scored; without, groups
  // are handed out unscored.
  AsyncRollouts(const AsyncRolloutOptions& options, const Dataset* dataset, DatasetPosition start,
                int64_t published_version, AsyncRequestFn make_request, AsyncGenerateFn generate,
                AsyncScoreFn score = nullptr);
  // Waits for the generation and scoring calls in flight (they are never cancelled).
  ~AsyncRollouts();
  AsyncRollouts(const AsyncRollouts&) = delete;
  AsyncRollouts& operator=(const AsyncRollouts&) = delete;

  // The next `n` groups in draw order, each from a version >= learner_version -
  // max_staleness; a group that came back older is generated again (at most
  // max_regenerations times, then an error naming it). Before returning it starts the
  // groups the following steps will take: as many as the window allows, but no more
  // than `later` (groups the run may still take after these n). A group that failed to
  // generate or to be scored fails the call. Trainer thread only.
  absl::StatusOr<std::vector<AsyncGroup>> Take(int64_t n, int64_t learner_version, int64_t later);
  // Groups started from now on use weights at least `version`. Trainer thread only.
  void Publish(int64_t version);
  // Where the dataset stands for a checkpoint: just after the last group taken. Groups
  // drawn but not taken are drawn again by a run resumed from here.
  DatasetPosition consumed_position() const;
  AsyncRolloutStats stats() const;

 private:
  struct Slot {
    const Example* example = nullptr;
    uint64_t draw_index = 0;       // epoch * dataset size + index: unique over a run
    DatasetPosition drawn_at;      // the cursor before this example was drawn
    int64_t generations = 0;       // generation calls started
    bool in_flight = false;
    bool scoring = false;          // generated; queued for or on a scoring thread
    bool ready = false;
    bool stale = false;            // waits to be generated again
    int64_t min_version = 0;       // of the latest call
    GenerationRequest request;
    GroupGeneration generation;
    GroupScores scores;            // with a score function, once ready and generated
  };

  // Starts what may start now, in one generation call: stale groups again, then new
  // draws up to the window (or `taking`, the groups a Take waits for, when larger) and
  // the demand. Caller holds mu_.
  void LaunchLocked(int64_t taking);
  void RunCall(std::vector<std::shared_ptr<Slot>> slots, int64_t min_version);
  void JoinFinishedLocked();
  // A scoring thread: scores the queued groups one at a time until stopping_.
  void RunScorer();

  const AsyncRolloutOptions options_;
  const Dataset* dataset_;
  AsyncRequestFn make_request_;
  AsyncGenerateFn generate_;
  AsyncScoreFn score_;

  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::deque<std::shared_ptr<Slot>> slots_;  // drawn, not yet taken, in draw order
  DatasetPosition cursor_;                   // the next draw
  int64_t published_ = 0;
  int64_t demand_ = 0;  // groups the trainer may still take, counted from slots_.front()
  AsyncRolloutStats stats_;
  std::map<std::thread::id, std::thread> calls_;
  std::vector<std::thread::id> finished_;
  std::deque<std::shared_ptr<Slot>> to_score_;  // generated groups, in the order they came
  bool stopping_ = false;
  std::vector<std::thread> scorers_;  // max_concurrent_scoring threads with a score function
};

}  // namespace lightrl
