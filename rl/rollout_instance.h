// One rank of a multi-process rollout instance: the ranks of a ProcessGroup form one TP
// group or one EP group, each holds its shard of the policy (its heads and vocabulary
// rows, or its experts) and runs an engine on it (docs/distributed.md, "The inference
// engine on a tensor-parallel rollout instance"). Rank 0 serves: its
// RolloutWorkerCore gets parallel() and this instance as its fanout, so before each engine
// batch the batch is broadcast to the other ranks, which run it in Follow() until rank 0
// calls Stop(). Owns the TP comm and the batch wire format; not the group, the policies
// or the serving. Torch-free header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"
#include "policy/shard_spec.h"
#include "policy/tokenizer.h"
#include "rl/distributed.h"
#include "rollout/rollout_worker_core.h"

namespace lightrl {

class RolloutInstance final : public EngineBatchFanout {
 public:
  // `group` (not owned; it must outlive the instance) must have joined layout groups
  // (ProcessGroup::JoinLayoutGroups) whose TP group, or whose EP group, is the whole group,
  // or without TP whose EP x expert-TP ranks are (a collective: an EP instance joins its
  // EP comm here). With `copies`, the group's ranks may form several instances
  // (data-parallel copies of the shards): this rank's is its TP group, or its EP group
  // without TP (the EP group must then be the TP group), or under expert-TP without TP the
  // EP groups of its expert-TP group's members; or its TP group inside an EP group of
  // several (attention data parallelism: the EP group's instances step together, and
  // each must run a batch, maybe empty, whenever the others do).
  static absl::StatusOr<std::unique_ptr<RolloutInstance>> Create(ProcessGroup* group,
                                                                 bool copies = false);
  ~RolloutInstance() override;

  // This rank in the group; whether it leads its instance (the instance's lowest rank: it
  // announces, the others follow); the instance's index among the group's copies() of it.
  int64_t rank() const;
  bool leads() const;
  int64_t copy() const;
  int64_t copies() const;
  // The rank that leads copy `c` (the copies lie over consecutive blocks of ranks).
  int64_t LeaderOf(int64_t c) const;
  // The part of the policy this rank loads (PolicyModel::Load(dir, options, shard())).
  ShardCoords shard() const;
  // The engine's comms for this rank's shard (valid while the instance lives).
  EngineParallel parallel() const;

  // The leader (rank 0 of a whole-group instance): sends `batch` to the other ranks (their
  // Follow runs it). Every rank's engine must then run the batch, the leader's included.
  absl::Status Announce(const std::vector<GenerationRequest>& batch) override;
  // Rank 0, after Announce: `batch` on its engine, all of it; or, when the instance's TP
  // groups generate apart (an EP group of several TP groups: attention data parallelism),
  // its TP group's share (ShareOf) while the other groups run theirs, their leaders
  // sending the results here. The results in `batch`'s order.
  std::vector<GenerationResult> Run(Engine& engine,
                                    const std::vector<GenerationRequest>& batch) override;
  // Rank 0, after its own shard took `set` (the whole model's tensors): sends each other
  // rank exactly its blocks of them (point to point), which its Follow imports between
  // batches; OK once every rank has. After a failure past the first send no batch runs
  // (the ranks may hold different versions): the instance must be restarted.
  absl::Status AnnounceWeights(const WeightSet& set) override;
  // Rank 0: ends the other ranks' Follow. Idempotent.
  absl::Status Stop();
  // The leader: ends the other ranks' current Follow, which they may call again (an
  // instance over the learner's ranks: between generation phases they serve learner calls).
  absl::Status Pause();
  // Ranks > 0: creates an engine on `policy` (this rank's shard) with rank 0's `options`,
  // and runs each batch rank 0 announces until it stops (OK) or the group fails (waiting
  // for the next batch has no deadline; a rank 0 that goes away ends it with an error).
  absl::Status Follow(PolicyModel* policy, const EngineOptions& options,
                      const Tokenizer* tokenizer = nullptr);
  // The same on an engine the caller keeps (made on `policy` with parallel() and rank 0's
  // options), so that it outlives one Follow.
  absl::Status Follow(Engine* engine, PolicyModel* policy);

  // Share `c` of `copies` of a batch (requests c, c + copies, ...), and a share's results
  // put back in their places in `all` (results of the whole batch).
  static std::vector<GenerationRequest> ShareOf(const std::vector<GenerationRequest>& batch,
                                                int64_t c, int64_t copies);
  static void PlaceShare(std::vector<GenerationResult>* all, std::vector<GenerationResult> share,
                         int64_t c, int64_t copies);
  // ShareOf's size for a batch of `n` requests.
  static size_t ShareSize(size_t n, int64_t c, int64_t copies) {
    return (n + static_cast<size_t>(copies - 1 - c)) / static_cast<size_t>(copies);
  }

  // The batch wire format (any byte string that Decode... accepts came from Encode...).
  static std::string EncodeBatch(const std::vector<GenerationRequest>& batch);
  static absl::StatusOr<std::vector<GenerationRequest>> DecodeBatch(const std::string& bytes);
  // Engine results on the wire (between copies of an instance).
  static std::string EncodeResults(const std::vector<GenerationResult>& results);
  static absl::StatusOr<std::vector<GenerationResult>> DecodeResults(const std::string& bytes);
  // A rank's weight blocks on the wire (names, local shapes, bytes in `dtype`).
  static std::string EncodeBlocks(DType dtype, const std::vector<PolicyModel::WeightTensor>& blocks);
  static absl::StatusOr<std::pair<DType, std::vector<PolicyModel::WeightTensor>>> DecodeBlocks(
      const std::string& bytes);

  struct Impl;

 private:
  explicit RolloutInstance(std::unique_ptr<Impl> impl);
  // Rank r's encoded blocks of `set` at index r (rank 0's left empty).
  absl::StatusOr<std::vector<std::string>> SliceForRanks(const WeightSet& set) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
