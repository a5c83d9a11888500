// A worker process's side of the coordinator protocol: registers with the controller,
// heartbeats on its own thread, and registers again whenever the controller restarted or
// declared it dead. Owns that one thread and its channel; never touches the worker's
// service or engine, and never fails the worker because the controller is gone.
// Torch-free, and its header is free of protobuf and gRPC (DESIGN.md section 3).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_options.h"

namespace lightrl {

// What a worker tells the coordinator about itself.
struct WorkerDescription {
  // Unique per worker process, e.g. "rollout-host1-4242".
  std::string id;
  // kRolloutRole or kRewardRole (rollout/coordinator.h).
  std::string role;
  // "host:port" where the worker's own service listens, reachable from the controller.
  std::string address;
  // Prompt groups (rollout) or concurrent Score calls (reward) it takes at once; >= 1.
  int capacity = 1;
  // "cpu" or "cuda:N".
  std::string device = "cpu";
};

struct WorkerRegistrationOptions {
  // "host:port" of the controller's coordinator.
  std::string coordinator_address;
  // Sent as "authorization: Bearer <token>" when non-empty.
  std::string auth_token;
  // TLS of the channel (the server's CA, and this side's certificate for mutual TLS);
  // plaintext when tls.ca_file and tls.cert_file are empty.
  TlsOptions tls;
  WorkerDescription worker;
  // Called on the heartbeat thread before each Register and Heartbeat; must be
  // thread-safe and quick. Empty: the worker reports version 0.
  std::function<int64_t()> weight_version;
  // Deadline of each Register or Heartbeat call.
  absl::Duration call_deadline = absl::Seconds(5);
  // Wait before the first retry of a failed registration; multiplied by
  // backoff_multiplier after each further failure, capped at max_backoff. The cap also
  // bounds how long a worker takes to notice a coordinator that came (back) up.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  double backoff_multiplier = 2.0;
  absl::Duration max_backoff = absl::Seconds(5);

  // INVALID_ARGUMENT naming the field: empty address, id, role or worker address,
  // capacity < 1, non-positive deadline, or a backoff that does not grow.
  absl::Status Validate() const;
};

class WorkerRegistration {
 public:
  // Validates `options` and starts the registration thread; returns at once, before
  // the first registration, because the controller may not be up yet.
  static absl::StatusOr<std::unique_ptr<WorkerRegistration>> Start(
      const WorkerRegistrationOptions& options);
  // Stop().
  ~WorkerRegistration();
  WorkerRegistration(const WorkerRegistration&) = delete;
  WorkerRegistration& operator=(const WorkerRegistration&) = delete;

  // True between a successful Register and the next refused heartbeat (NOT_FOUND, a
  // changed epoch). An unreachable coordinator does not clear it: the worker keeps its
  // registration until told otherwise.
  bool registered() const;
  // Blocks until registered() or `timeout`; returns registered().
  bool WaitUntilRegistered(absl::Duration timeout) const;
  // Successful Register calls so far; each re-registration adds one.
  int64_t num_registrations() const;
  // The epoch of the coordinator last registered with; empty before the first.
  std::string coordinator_epoch() const;

  // Stops the thread, cancelling a call in flight; the coordinator then drops the
  // worker once its heartbeats stop. Idempotent.
  void Stop();

 private:
  class Impl;
  explicit WorkerRegistration(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
