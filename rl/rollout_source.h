// Where the controller's prompt groups are generated: the in-process engine, or a fleet
// of rollout worker processes reached over gRPC (spawned by the run, or started by a
// cluster scheduler and registered with the run's coordinator). Owns the fleet's
// coordinator and the handles of the processes it asked a WorkerLauncher to start; it
// knows no command line. Torch-free and protobuf-free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"
#include "rl/run_config.h"
#include "rl/worker_launcher.h"

namespace lightrl {

struct GroupGeneration {
  absl::Status status;
  int64_t weight_version = -1;  // every sample of the group came from this version
  std::vector<GeneratedSample> samples;
};

// Takes one finished group: its index in the call's requests and its generation.
using GroupCallback = std::function<void(size_t index, GroupGeneration group)>;

class RolloutSource {
 public:
  virtual ~RolloutSource() = default;
  // Generates every request with weights at least `min_weight_version`; results in
  // request order. A failed group carries its error.
  virtual std::vector<GroupGeneration> Generate(const std::vector<GenerationRequest>& requests,
                                                int64_t min_weight_version) = 0;
  // The same, handing each group to `on_group` as soon as it is done, on whatever thread
  // finished it (several may call at once); returns once every group was handed over,
  // each exactly once. This default calls Generate and then hands the groups over in
  // request order; the fleet hands each over as its worker answers.
  virtual void GenerateEach(const std::vector<GenerationRequest>& requests,
                            int64_t min_weight_version, const GroupCallback& on_group);
  // Makes the policy's current weights, as `version`, the ones later groups use.
  virtual absl::Status PublishWeights(int64_t version) = 0;
  // Counters for the metrics ("fleet/groups_requeued", ...); empty for the engine.
  virtual std::vector<std::pair<std::string, double>> Stats() const = 0;
  // Reward workers this source started (fleet.spawn_reward_workers): built-in kind ->
  // "host:port" of the `lightrl reward-worker` serving it. Empty: none.
  virtual std::map<std::string, std::string> RewardWorkers() const { return {}; }
  // For the reward router's check_server: OK unless the spawned reward worker at
  // `address` is dead past its restarts (one with restarts left is restarted on its
  // address); then UNAVAILABLE naming the worker, how it ended and the restart bound.
  virtual absl::Status CheckRewardWorker(const std::string& /*address*/) {
    return absl::OkStatus();
  }
};

using RolloutSourcePtr = std::unique_ptr<RolloutSource>;

// Runs a batch on an engine whose model is sharded over other processes that run the same
// batch (rank 0 of a learner whose ranks follow it, rl/trainer.cc): the engine's results.
using EngineBatchRunner =
    std::function<std::vector<GenerationResult>(const std::vector<GenerationRequest>&)>;

// Generates with `engine` (which reads the live policy, so publishing is free), through
// `run` when given.
RolloutSourcePtr MakeEngineRolloutSource(Engine* engine, EngineBatchRunner run = nullptr);

// Generates with an engine over its own copy of `policy`'s weights (twice the weight
// memory), so generation may run on another thread while the learner updates `policy`.
// PublishWeights copies the policy's weights in once the running Generate call is done;
// call it from the thread that updates `policy`. Generate calls run one at a time.
absl::StatusOr<RolloutSourcePtr> MakeEngineCopyRolloutSource(PolicyModel* policy,
                                                             const EngineOptions& options,
                                                             const Tokenizer* tokenizer);

// Where a fleet's weight pushes read the policy, on the controller (learner rank 0).
struct FleetWeights {
  // The whole model: its ExportWeights for the gRPC push, its device buffers for
  // fleet.weight_sync nccl. Null for a sharded learner, which has instead:
  PolicyModel* whole = nullptr;
  // the model's config and its tensors gathered into host memory after the last update
  // (FP32, ExportWeights' names, order and shapes: GatherShardsToHost), so no device
  // holds the whole model; the gRPC push only.
  const ModelConfig* config = nullptr;
  const std::vector<PolicyModel::WeightTensor>* host = nullptr;
  // Writes the current weights as a checkpoint folder in a dtype, the weights spawned
  // tensor- or expert-parallel instances start from (LearnerGroup::SaveWeights).
  std::function<absl::Status(const std::string& dir, DType dtype)> save;
};

// Starts the coordinator, has `launcher` start the worker processes in spawn mode (it
// may be null in cluster mode) and waits for fleet.min_workers rollout workers. The
// first PublishWeights replaces whatever weights the workers hold (the run may have
// resumed from an older checkpoint). Spawned workers log to run.output_dir/logs/ and
// stop with the returned source. `weights` must outlive it.
absl::StatusOr<RolloutSourcePtr> StartFleetRolloutSource(const RunConfig& config,
                                                         FleetWeights weights,
                                                         WorkerLauncher* launcher);

// The managed Python reward servers of `config` (reward.servers.NAME.python), started by
// `launcher`, which waits until each answers Health; null when the config names none.
// FAILED_PRECONDITION naming the first such server when there is no launcher. They log
// to run.output_dir/logs/ and stop with the returned handle.
absl::StatusOr<LaunchedWorkersPtr> StartManagedPythonRewards(const RunConfig& config,
                                                             WorkerLauncher* launcher);

}  // namespace lightrl
