// The controller's side of the rollout protocol: a client for one rollout worker
// (Generate, UpdateWeights, Health) and the fleet that spreads prompt groups over the
// live workers, requeues the groups of a worker that fails, and keeps every worker on the
// published weights. Torch-free and protobuf-free header.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_options.h"
#include "inference_engine/sampling_params.h"
#include "rollout/nccl_weight_group.h"
#include "rollout/weight_set.h"

namespace lightrl {

struct RolloutClientOptions {
  // "host:port" of the worker.
  std::string address;
  // Sent as "authorization: Bearer <token>" when non-empty.
  std::string auth_token;
  // TLS of the channel (the server's CA, and this side's certificate for mutual TLS);
  // plaintext when tls.ca_file and tls.cert_file are empty.
  TlsOptions tls;
  // Bound on one Generate call (a group of 80K-token samples takes a while).
  absl::Duration generate_deadline = absl::Hours(4);
  // Bound on Health and UpdateWeights.
  absl::Duration rpc_deadline = absl::Minutes(5);
};

// One group's samples, all from `weight_version`.
struct GroupOutput {
  std::string group_id;
  int64_t weight_version = -1;
  std::vector<GeneratedSample> samples;  // in sample-index order
};

struct RolloutWorkerHealth {
  bool serving = false;
  std::string worker_id;
  int64_t weight_version = -1;
  int64_t active_groups = 0, queued_groups = 0, generated_tokens = 0, engine_batches = 0;
  std::string device;
  bool batch_invariant = false;  // the engine's numerics.batch_invariant mode
};

// Largest logprob a sample may carry: log-probabilities are <= 0, up to FP32 rounding.
inline constexpr float kMaxSampleLogprob = 1e-4f;

// Checks a worker's reply to `request` before anything trusts it: exactly n samples, each
// with 1 to max_new_tokens tokens, token ids in [0, vocab_size) (unchecked when
// vocab_size is 0), one logprob per token, each finite and <= kMaxSampleLogprob. Errors
// are INTERNAL (the worker's fault) naming the group, the sample and the value.
absl::Status CheckGroupOutput(const GenerationRequest& request, const GroupOutput& output,
                              int64_t vocab_size);

class RolloutClient {
 public:
  static absl::StatusOr<std::unique_ptr<RolloutClient>> Create(const RolloutClientOptions& options);
  ~RolloutClient();

  // Generates `request.params.n` samples of `request.prompt`; errors carry the worker's
  // status code and name its address. A reply that is not exactly n samples of one
  // version that pass CheckGroupOutput (with `vocab_size`) is INTERNAL. Thread-safe.
  absl::StatusOr<GroupOutput> Generate(const GenerationRequest& request, int64_t min_weight_version,
                                       int64_t vocab_size = 0);
  // Streams `weights` to the worker; returns once it serves them. Without
  // `replace_newer` a worker holding a newer version refuses them (FAILED_PRECONDITION).
  absl::Status UpdateWeights(const WeightSet& weights, bool replace_newer = false);
  absl::StatusOr<RolloutWorkerHealth> Health();
  // NCCL weight sync (see the proto): joins the worker to a group as `rank`, and has it
  // receive one broadcast. Both block until the collective is done on the worker's side.
  absl::Status JoinWeightGroup(const std::string& nccl_unique_id, int rank, int world_size,
                               int64_t group_id, absl::Duration timeout);
  absl::Status ReceiveWeights(const WeightBroadcast& broadcast);

  const std::string& address() const { return options_.address; }

 private:
  struct Stub;
  explicit RolloutClient(const RolloutClientOptions& options);
  RolloutClientOptions options_;
  std::unique_ptr<Stub> stub_;
};

struct WorkerEndpoint {
  std::string worker_id;
  std::string address;
  int capacity = 0;  // groups in flight at once; 0 = the fleet's default
};

struct RolloutFleetOptions {
  std::string auth_token;
  // TLS of the channels to workers at non-loopback addresses (RolloutClientOptions::tls);
  // workers on loopback (spawned on this machine) are called in plaintext.
  TlsOptions tls;
  // Groups in flight per worker when it does not say.
  int default_capacity = 8;
  // Workers a group may be tried on before it is reported failed.
  int max_group_attempts = 3;
  // How long Generate waits with no live worker before failing what is left.
  absl::Duration no_worker_timeout = absl::Minutes(5);
  // How often the worker list is re-read.
  absl::Duration refresh_interval = absl::Milliseconds(200);
  absl::Duration generate_deadline = absl::Hours(4);
  absl::Duration rpc_deadline = absl::Minutes(5);

  absl::Status Validate() const;
};

// Where the fleet learns who is alive (the coordinator), and where it reports a worker
// it saw fail (so the coordinator stops listing it until it registers again).
struct RolloutFleetHooks {
  std::function<std::vector<WorkerEndpoint>()> list_workers;
  std::function<void(const std::string& worker_id)> on_worker_failed;
};

struct GroupOutcome {
  absl::Status status;  // OK, or why the group failed after its attempts
  GroupOutput output;
  int attempts = 0;
};

struct RolloutFleetStats {
  int64_t groups_done = 0, groups_requeued = 0, worker_failures = 0, weight_pushes = 0;
  int64_t weight_broadcasts = 0;  // versions sent by NCCL broadcast
  int64_t broadcast_fallbacks = 0;  // broadcasts that failed and went by gRPC instead
};

// A weight version in this process's GPU memory, for NCCL broadcast to GPU workers.
struct DeviceWeights {
  int64_t version = 0;
  std::string model_config_json;
  std::vector<std::string> names;        // each parameter, in the workers' order
  std::vector<DeviceBuffer> buffers;     // their device storage, same dtype as the workers'
  int device = 0;                        // CUDA device of `buffers`
  // The same version as host bytes, for workers outside the group (late joiners) and
  // for falling back to the gRPC stream when a broadcast fails.
  std::function<absl::StatusOr<WeightSet>()> export_host;
  absl::Duration timeout = absl::Minutes(5);
  bool batch_invariant = false;  // as WeightSet::batch_invariant
};

class RolloutFleet {
 public:
  static absl::StatusOr<std::unique_ptr<RolloutFleet>> Create(const RolloutFleetOptions& options,
                                                             RolloutFleetHooks hooks);
  ~RolloutFleet();

  // Makes `weights` the version every worker must serve: pushes them to the live workers
  // now (a worker that fails the push is reported failed) and to any worker that joins
  // later, before it gets work. The first weights, and those a joining worker gets,
  // replace whatever it holds. Fails only when no worker took them.
  absl::Status PublishWeights(WeightSet weights);
  // The same by NCCL broadcast from `weights.buffers` (this process is rank 0): the live
  // workers form a group on first use (again whenever the live set changes), receive the
  // broadcast into staging memory and swap it in between engine batches. If forming the
  // group or the broadcast fails, the version goes out by the gRPC stream instead.
  absl::Status PublishDeviceWeights(const DeviceWeights& weights);

  // Generates every request on the live workers, at most their capacity each. A group
  // whose worker fails (process gone, connection lost, stale weights, or a reply that
  // fails CheckGroupOutput against the published model's vocabulary) goes back to the
  // queue and runs on another worker, up to max_group_attempts; the worker is reported
  // failed. A group the worker rejects as bad input fails alone. Outcomes are in request
  // order. With `on_group`, each outcome is instead handed to it (with its request index)
  // the moment the group is done, on the thread that finished it, outside the fleet's
  // lock; several calls may run at once, and the returned outcomes are then empty.
  std::vector<GroupOutcome> Generate(
      const std::vector<GenerationRequest>& requests, int64_t min_weight_version,
      const std::function<void(size_t index, GroupOutcome outcome)>& on_group = nullptr);

  RolloutFleetStats stats() const;
  int64_t published_version() const;

  struct Impl;

 private:
  explicit RolloutFleet(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
