// A rollout worker: lightrl.v1.RolloutService over a RolloutWorkerCore (rollout_worker_core.h),
// which gathers concurrent Generate calls into engine batches and swaps weights between
// batches, so every sample of a call comes from one weight version. The service only
// translates: it parses and bounds the wire, checks the auth token, and maps the core's
// calls and statuses to gRPC. Torch-free and protobuf-free header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_options.h"
#include "rollout/rollout_worker_core.h"

namespace lightrl {

// The service's options on top of the core's (queue, batching, policy, engine, weights).
struct RolloutWorkerOptions : RolloutWorkerCoreOptions {
  // Reported by Health and to the coordinator.
  std::string worker_id = "rollout";
  // "host:port"; port 0 picks a free one (address() has the real one).
  std::string listen_address = "127.0.0.1:0";
  // Shared token every call must carry; required unless listen_address is loopback.
  std::string auth_token;
  // Largest single request message (a Generate request, whose prompt of N tokens takes at
  // most 5N bytes, or one weight chunk of at most 4 MiB); a bigger one is refused by gRPC
  // with RESOURCE_EXHAUSTED naming the limit, before it is parsed. In [8 MiB, 1 GiB].
  int max_message_bytes = 64 << 20;
  // Bytes of requests held at once across concurrent calls (Generate and the unary
  // methods, from arrival until the call is done): a call that would pass it is
  // RESOURCE_EXHAUSTED naming this budget, at once and unparsed; the controller then
  // requeues the group. 0 = 4 x max_message_bytes; else at least max_message_bytes.
  int64_t max_inflight_bytes = 0;
  // TLS of the listener (server certificate, and client certificates under client_auth);
  // plaintext when tls.cert_file is empty. The auth token is checked on top.
  TlsOptions tls;

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
