// The controller's client for one reward server (lightrl.v1.RewardService): per-call
// deadline, bounded retries with exponential backoff on UNAVAILABLE/DEADLINE_EXCEEDED,
// a cap on concurrent calls, and validation of what comes back (one finite score per
// item). Owns no routing across servers. Must not include torch (DESIGN.md section 3).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/tls_options.h"
#include "reward/reward_function.h"

namespace lightrl {

struct RewardClientOptions {
  // "host:port" of the server.
  std::string address;
  // Sent as "authorization: Bearer <token>" when non-empty.
  std::string auth_token;
  // TLS of the channel (the server's CA, and this side's certificate for mutual TLS);
  // plaintext when tls.ca_file and tls.cert_file are empty.
  TlsOptions tls;
  // Deadline of each attempt, not of the whole call with its retries.
  absl::Duration deadline = absl::Seconds(30);
  // Attempts per call, the first included; >= 1.
  int max_attempts = 4;
  // Sleep before the first retry; multiplied by backoff_multiplier after each, capped.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  double backoff_multiplier = 2.0;
  absl::Duration max_backoff = absl::Seconds(5);
  // Calls in flight at once from this client; further callers wait. >= 1.
  int max_concurrent_calls = 16;

  absl::Status Validate() const;
};

struct RewardRequestItem {
  std::string id;  // unique within one call; echoed in the result
  RewardInput input;
};

struct RewardResponseItem {
  std::string id;
  RewardResult result;  // score and components are finite
  std::string text;     // the server's note, if any
};

struct RewardServerHealth {
  bool serving = false;
  std::string reward_kind;
};

class RewardClient {
 public:
  static absl::StatusOr<std::unique_ptr<RewardClient>> Create(const RewardClientOptions& options);
  ~RewardClient();

  // Scores `items` (1..4096) with `reward_kind` ("" = the server's default). Results are
  // in the order of `items`. Errors name the address and the server's last status; a
  // response with missing, unknown or non-finite results is an INTERNAL error, never
  // a silent zero. Thread-safe.
  absl::StatusOr<std::vector<RewardResponseItem>> Score(const std::vector<RewardRequestItem>& items,
                                                        const std::string& reward_kind = "");
  // One Health call with the same deadline and retries.
  absl::StatusOr<RewardServerHealth> Health();

  const std::string& address() const { return options_.address; }

 private:
  struct Channel;
  explicit RewardClient(const RewardClientOptions& options);
  bool HasCapacity() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RewardClientOptions options_;
  std::unique_ptr<Channel> channel_;
  absl::Mutex mu_;
  int num_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lightrl
