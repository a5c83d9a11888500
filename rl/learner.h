// The learner: turns scored samples into policy updates (CISPO and the comparison losses)
// or supervised updates (SFT warm-up), with AdamW, an LR schedule, gradient clipping and
// a policy version that the engine reads. Torch-free header over the PolicyModel it
// updates in place; optimizer state is saved and restored with its checkpoints. Given a
// ProcessGroup it is one rank of a data-parallel learner (docs/distributed.md). It owns
// the training steps; the state they update lives in its parts: adamw.h, gradient_reducer.h,
// zero_optimizer.h, expert_shards.h, optimizer_state_io.h and learner_stats.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "policy/policy_model.h"
#include "rl/distributed.h"
#include "rl/learner_options.h"
#include "rl/learner_stats.h"

namespace lightrl {

// One response to learn from.
struct TrainSample {
  std::string id;  // names the sample in errors (e.g. "step-3-0-5/2": group id / index)
  std::vector<int32_t> prompt;
  std::vector<int32_t> response;
  // The engine's logprob of each response token (log softmax(logits / T)), one per token;
  // empty when the source did not record them. A loss that reads them (truncated IS)
  // refuses a kept sample without them.
  std::vector<float> rollout_logprobs;
  double advantage = 0;  // RL; ignored by SFT
  bool keep = true;      // false: the response's tokens are masked out (overlong filter)
};

class Learner {
 public:
  // With a `group` of world size N > 1 (not owned; it outlives the learner), this is one
  // of N ranks: every rank must create its learner on identical weights and then make
  // the same calls with the same arguments. Each call is then a collective. A policy
  // built for a shard (PolicyModel::CreateShard) holds only its experts: its shard's ep
  // must be options.data_parallel.expert_parallel, its expert_tp is the experts' TP
  // size, and its place must be this rank's in rl/parallel_layout.h's GroupsOf; its
  // experts' weights, gradients and optimizer state then live on this rank alone
  // (docs/distributed.md, "Sharded experts").
  // Tensor parallelism comes from the layout the group joined (ProcessGroup::
  // JoinLayoutGroups, before Create): with tp > 1 the policy must be this rank's TP shard
  // (PolicyModel::Create / Load with ShardCoordsOf(layout, groups)), the batch is split
  // over the DP group only and the ranks of a DP group start from the same shards
  // (docs/distributed.md); ZeRO-1 shards over the DP group. With expert parallelism too
  // (a model holding only its experts) sequence_parallel is required.
  static absl::StatusOr<std::unique_ptr<Learner>> Create(PolicyModel* policy,
                                                         const LearnerOptions& options,
                                                         ProcessGroup* group = nullptr);
  ~Learner();

  // One generation batch: old logprobs once, then `minibatches` updates. With N ranks
  // every rank passes the whole global batch; each trains on its share of every
  // minibatch (split by token count) and the update equals one process's on the whole
  // batch; the stats are the global figures, on every rank.
  absl::StatusOr<LearnerStats> TrainRl(const std::vector<TrainSample>& batch);
  // One supervised update: cross-entropy on response tokens given the prompt, with
  // `lr` overriding the schedule when > 0. Split across ranks as TrainRl.
  absl::StatusOr<LearnerStats> TrainSft(const std::vector<TrainSample>& batch, double lr = 0);

  // Increments with every optimizer update; samples record the version that made them.
  int64_t version() const;
  int64_t optimizer_steps() const;

  // Optimizer state and counters, next to a model checkpoint. With N ranks both are
  // collectives: without ZeRO-1 rank 0 writes `path` (every rank holds the same state);
  // with ZeRO-1 rank r writes its shard to `path`.rank<r>-of-<N>, and loading needs the
  // same N (an error names both world sizes otherwise). With expert_parallel E, ranks
  // 0..E-1 also write their experts' state to `path`.experts<r>-of-<E> (under expert-TP K
  // ranks 0..E*K-1, with `.etp<t>-of-<K>` appended), and loading needs the same E and K.
  // Under tensor parallelism T, TP rank t writes the same files named from
  // `path`.tp<t>-of-<T> (N is then the DP group's size), and loading needs the same T.
  // Files are written atomically.
  absl::Status SaveState(const std::string& path) const;
  absl::Status LoadState(const std::string& path);

  struct Impl;

 private:
  explicit Learner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
