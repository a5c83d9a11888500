// The rollout worker without its wire: a queue of prompt groups, the batcher thread that
// gathers them into engine batches, the served policy and engine, and the weight swaps
// (host weight sets and NCCL broadcasts) that happen between batches only, so every
// sample of a group comes from one weight version. Knows nothing of gRPC or protobuf
// (the service in rollout_worker.h translates the wire to these calls); torch-free and
// protobuf-free header.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"
#include "rollout/weight_set.h"

namespace lightrl {

// Hands each engine batch of the serving rank of a multi-process rollout instance to the
// instance's other ranks, which run the same batch on their shards (rl/rollout_instance.h).
class EngineBatchFanout {
 public:
  virtual ~EngineBatchFanout() = default;
  // Called before the serving rank's engine runs `batch`; the batch does not run (its
  // groups fail with the error) unless it returns OK.
  virtual absl::Status Announce(const std::vector<GenerationRequest>& batch) = 0;
  // Runs the announced `batch` on the serving rank's `engine`: all of it by default (the
  // other ranks run it too); an instance whose TP groups generate apart runs its share and
  // gathers the others' results. Results in `batch`'s order.
  virtual std::vector<GenerationResult> Run(Engine& engine,
                                            const std::vector<GenerationRequest>& batch);
  // Called between batches, after the serving rank took `set` (the whole model's tensors,
  // checked against the served model): each other rank takes its part of it. An error
  // means some rank may not have: the instance then serves no more batches.
  virtual absl::Status AnnounceWeights(const WeightSet& set) = 0;
};

struct RolloutWorkerCoreOptions {
  // Where the policy lives and its dtype once weights arrive.
  PolicyOptions policy;
  EngineOptions engine;
  // tokenizer.json for stop strings; empty: requests with stop strings are refused.
  std::string tokenizer_path;
  // Groups waiting for the engine at most; more are RESOURCE_EXHAUSTED.
  int max_queued_groups = 4096;
  // How long the batcher waits for more groups once one arrives; it waits again (up to
  // 10 windows) while more keep coming.
  absl::Duration batch_window = absl::Milliseconds(2);
  // Largest weight update accepted (bytes of tensor data, held in host memory while it
  // arrives); 0 = half the host's physical memory. An update must also declare exactly the
  // served model's tensors (names and shapes), checked before anything is allocated.
  int64_t max_weight_bytes = 0;
  // The serving rank of a multi-process instance: the engine's model-parallel comms (the
  // policy is then this rank's shard) and the fanout of its batches to the other ranks.
  // Neither is owned; both outlive the core. Default: a one-process worker.
  EngineParallel parallel;
  EngineBatchFanout* fanout = nullptr;

  absl::Status Validate() const;
};

struct RolloutWorkerCoreStats {
  int64_t weight_version = -1;  // -1: no weights yet
  bool serving = false;         // holds weights and is not shutting down
  int64_t active_groups = 0, queued_groups = 0;
  int64_t generated_tokens = 0;
  int64_t engine_batches = 0;
  bool batch_invariant = false;  // the engine's numerics mode (EngineOptions::batch_invariant)
};

// Joining an NCCL weight group (rollout/nccl_weight_group.h) as one of its receivers.
struct WeightGroupJoin {
  int64_t group_id = -1;
  std::string nccl_unique_id;
  int rank = 0, world_size = 0;
  absl::Duration timeout = absl::Seconds(120);
};

class RolloutWorkerCore {
 public:
  // A group's outcome: an error, or its samples and the weight version that generated
  // all of them.
  using DeliverFn = std::function<void(absl::Status, int64_t, std::vector<GeneratedSample>)>;

  // Starts the batcher. Without `policy` the core waits for its first weights (which carry
  // the model config); with it, it serves `policy` as `version` at once.
  static absl::StatusOr<std::unique_ptr<RolloutWorkerCore>> Create(
      const RolloutWorkerCoreOptions& options, std::unique_ptr<PolicyModel> policy = nullptr,
      int64_t version = 0);
  // Shutdown().
  ~RolloutWorkerCore();

  // Checks `request` against the served weights (a version at least `min_weight_version`,
  // token ids inside the vocabulary, valid sampling, a tokenizer for stop strings) and
  // queues it. On an error nothing is queued and `deliver` is never called; on OK it is
  // called exactly once, from the batcher's thread (or from Shutdown with UNAVAILABLE).
  absl::Status Submit(GenerationRequest request, int64_t min_weight_version, DeliverFn deliver);

  // Installs `set` between engine batches (waiting for the running one); a version not
  // newer than the served one is FAILED_PRECONDITION unless `replace_newer`. A set of
  // another model than the served one is INVALID_ARGUMENT. The engine takes the set's
  // numerics mode (batch_invariant) with it; a mode the engine cannot run (on CUDA, in a
  // multi-process instance) fails before anything changes.
  absl::Status ApplyWeights(WeightSet set, bool replace_newer);

  // Replaces any NCCL group with a new one as `join.rank`; blocks until every rank joined
  // or the timeout. Needs a CUDA policy device.
  absl::Status JoinWeightGroup(const WeightGroupJoin& join);
  // Receives a broadcast of the group joined last into device staging memory while the
  // engine keeps generating, then swaps it in between batches; returns the served
  // version. A failed broadcast drops the group (the controller forms a new one).
  absl::StatusOr<int64_t> ReceiveBroadcast(const WeightBroadcast& broadcast);

  // Whether weight updates by the gRPC stream (ApplyWeights) are taken: always; a
  // multi-process instance (options.fanout) hands each other rank its part.
  absl::Status AcceptsWeights() const;
  // OK unless this core serves a multi-process instance, whose other ranks an NCCL
  // broadcast to this rank alone would leave behind: UNIMPLEMENTED for it.
  // JoinWeightGroup and ReceiveBroadcast refuse with it.
  absl::Status AcceptsBroadcast() const;

  // The served version; -1 before any weights.
  int64_t version() const;
  // The served model's tensors, which a weight update must declare (empty: none yet).
  std::vector<PolicyModel::WeightSpec> weight_specs() const;
  // max_weight_bytes resolved.
  int64_t weight_budget() const;
  RolloutWorkerCoreStats stats() const;

  // Stops taking groups, fails the queued ones with UNAVAILABLE and waits for the running
  // batch. Idempotent.
  void Shutdown();

  struct Impl;

 private:
  explicit RolloutWorkerCore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
