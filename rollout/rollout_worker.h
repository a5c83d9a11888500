// A rollout worker: lightrl.v1.RolloutService over one inference engine. Concurrent
// Generate calls are gathered into engine batches; weight updates apply between batches,
// so every sample of a call comes from one weight version. Owns its policy copy and
// engine; torch-free and protobuf-free header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"

namespace lightrl {

struct RolloutWorkerOptions {
  // Reported by Health and to the coordinator.
  std::string worker_id = "rollout";
  // "host:port"; port 0 picks a free one (address() has the real one).
  std::string listen_address = "127.0.0.1:0";
  // Shared token every call must carry; required unless listen_address is loopback.
  std::string auth_token;
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
  // Largest single request message (a Generate request, whose prompt of N tokens takes at
  // most 5N bytes, or one weight chunk of at most 4 MiB); a bigger one is refused by gRPC
  // with RESOURCE_EXHAUSTED naming the limit, before it is parsed. In [8 MiB, 1 GiB].
  int max_message_bytes = 64 << 20;
  // Bytes of requests held at once across concurrent calls (Generate and the unary
  // methods, from arrival until the call is done): a call that would pass it is
  // RESOURCE_EXHAUSTED naming this budget, at once and unparsed; the controller then
  // requeues the group. 0 = 4 x max_message_bytes; else at least max_message_bytes.
  int64_t max_inflight_bytes = 0;

  absl::Status Validate() const;
};

struct RolloutWorkerStats {
  int64_t weight_version = -1;  // -1: no weights yet
  int64_t active_groups = 0, queued_groups = 0;
  int64_t generated_tokens = 0;
  int64_t engine_batches = 0;
  // The in-flight budget of request bytes and the most it has held at once.
  int64_t inflight_budget_bytes = 0, peak_inflight_bytes = 0;
};

class RolloutWorker {
 public:
  // Starts serving. Without `policy` the worker waits for its first UpdateWeights (which
  // carries the model config); with it, it serves `policy` as `version` at once.
  static absl::StatusOr<std::unique_ptr<RolloutWorker>> Start(
      const RolloutWorkerOptions& options, std::unique_ptr<PolicyModel> policy = nullptr,
      int64_t version = 0);
  ~RolloutWorker();

  const std::string& address() const;
  RolloutWorkerStats stats() const;
  // Stops accepting calls, fails queued groups with UNAVAILABLE, waits for the running
  // batch, then stops the server.
  void Shutdown();
  // Blocks until Shutdown() (from another thread or a signal handler's thread).
  void Wait();

  struct Impl;

 private:
  explicit RolloutWorker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
