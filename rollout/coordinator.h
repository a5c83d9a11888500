// The controller's registry of live rollout and reward workers, served over gRPC as
// lightrl.v1.Coordinator: workers register and heartbeat, the dispatcher reads the
// registry. Owns liveness only (who is up, where, how much it takes); never dispatches
// work. Torch-free, and its header is free of protobuf and gRPC (DESIGN.md section 3).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls_options.h"

namespace lightrl {

// The roles a worker may register with.
inline constexpr char kRolloutRole[] = "rollout";
inline constexpr char kRewardRole[] = "reward";

// A worker silent for this many heartbeat intervals is dropped (the protocol's contract).
inline constexpr int kMissedHeartbeatsBeforeDrop = 3;

struct CoordinatorOptions {
  // "host:port"; port 0 picks a free port (Coordinator::address() has the real one).
  std::string listen_address = "127.0.0.1:0";
  // Shared secret expected in the `authorization` metadata ("Bearer T" or "T") of every
  // call. Empty: no check, which Validate() allows only on a loopback address.
  std::string auth_token;
  // Told to workers at registration; one silent for kMissedHeartbeatsBeforeDrop
  // intervals is dropped. Short intervals notice deaths sooner at the cost of traffic.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // Largest request message accepted (registrations and heartbeats are a few hundred
  // bytes); a bigger one is RESOURCE_EXHAUSTED. In [64 KiB, 1 GiB].
  int max_request_bytes = 1 << 20;
  // Bytes of requests held at once across concurrent calls; a call that would pass it is
  // RESOURCE_EXHAUSTED naming this budget and the worker retries at its next heartbeat.
  // 0 = 4 x max_request_bytes; else at least max_request_bytes.
  int64_t max_inflight_bytes = 0;
  // TLS of the listener (server certificate, and client certificates under client_auth);
  // plaintext when tls.cert_file is empty. The auth token is checked on top.
  TlsOptions tls;

  // INVALID_ARGUMENT for a malformed address, a non-positive interval, a message limit
  // out of range, or a non-loopback address without an auth token.
  absl::Status Validate() const;
};

// One live worker as the coordinator sees it.
struct WorkerRecord {
  std::string id;
  std::string role;     // kRolloutRole or kRewardRole
  std::string address;  // where the worker's own service listens, "host:port"
  int capacity = 1;     // prompt groups (rollout) or concurrent Score calls (reward)
  std::string device;   // "cpu" or "cuda:N"
  int64_t weight_version = 0;  // latest reported
  absl::Time registered_at;    // of the current record; a re-registration resets it
  absl::Time last_seen;        // last Register or Heartbeat
};

class Coordinator {
 public:
  // Validates `options`, starts serving and the expiry thread; returns once listening.
  // Each start draws a fresh epoch, which is how workers notice a restarted controller.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(const CoordinatorOptions& options);
  // Shutdown().
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // "host:port" with the bound port (never 0).
  std::string address() const;
  int port() const;
  // Identifies this coordinator's lifetime; differs on every Start.
  std::string epoch() const;
  absl::Duration heartbeat_interval() const;

  // The live workers of `role` ("" = every role), sorted by id. Workers past their
  // deadline are left out even if the expiry thread has not dropped them yet.
  std::vector<WorkerRecord> Workers(const std::string& role = "") const;
  // Blocks until at least `count` workers of `role` ("" = any) are live; false on
  // timeout or shutdown.
  bool WaitForWorkers(const std::string& role, int count, absl::Duration timeout) const;

  // Drops `worker_id` because the controller saw it fail (a call errored or timed out).
  // Its next heartbeat is refused with NOT_FOUND, so a worker that is in fact alive
  // registers again and reappears. Unknown ids are ignored.
  void MarkDead(const std::string& worker_id);

  // Bumped on every join (registration, re-registration included) and every leave
  // (expiry, MarkDead); heartbeats do not change it. Lets the dispatcher re-read
  // Workers() only when something changed.
  uint64_t generation() const;
  // Blocks until generation() differs from `seen` and returns the new value; returns
  // `seen` on timeout or shutdown.
  uint64_t WaitForChange(uint64_t seen, absl::Duration timeout) const;

  // Stops serving (in-flight calls get a short grace) and the expiry thread; the
  // registry stays readable. Idempotent.
  void Shutdown();

 private:
  class Impl;
  explicit Coordinator(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace lightrl
