// Combines several rewards into one score per sample: sum(weight_i * score_i) over
// entries that are built-in or user functions run in-process, or remote reward servers
// reached through RewardClient. Owns the fan-out, retries and result assembly; owns no
// servers and knows nothing of the controller. Must not include torch (DESIGN.md
// section 3).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/json.h"
#include "common/tls_options.h"
#include "reward/reward_function.h"

namespace lightrl {

struct RewardRouterEntry {
  // Names the entry in result components ("name", "name/part") and in errors; unique,
  // non-empty, without '/'.
  std::string name;
  // Multiplies the entry's score; finite, may be negative (a penalty) or 0 (log only).
  double weight = 1.0;
  // A built-in kind scored in-process ("math", "format", ...). Exactly one of kind,
  // address and function is set.
  std::string kind;
  // Options of the built-in kind, a JSON object as reward/reward_registry.h reads it
  // ({"pattern": ...} for format, {"max_length": ..., "buffer": ...} for length); null
  // or {} = the kind's defaults.
  Json options;
  // "host:port" of a remote lightrl.v1.RewardService.
  std::string address;
  // Shared secret sent to the remote server; empty for a loopback server without one.
  std::string auth_token;
  // reward_kind hint sent to the remote server; "" = the server's default.
  std::string reward_kind;
  // TLS of the remote server's channel; plaintext when empty.
  TlsOptions tls;
  // A user's in-process function; shared so that options stay copyable. Must be
  // thread-safe, as RewardFunction requires.
  std::shared_ptr<RewardFunction> function;
};

struct RewardRouterOptions {
  // The rewards to combine; at least one.
  std::vector<RewardRouterEntry> entries;
  // Deadline of one attempt of one remote call (a chunk of <= kMaxScoreBatchItems items).
  absl::Duration timeout = absl::Seconds(30);
  // Attempts per remote call, the first included; >= 1. A call fails for good after
  // this many, or at once on an error retrying cannot fix (see ScoreBatch).
  int max_attempts = 3;
  // Sleep before the first retry; multiplied by backoff_multiplier (>= 1) after each and
  // capped at max_backoff.
  absl::Duration initial_backoff = absl::Milliseconds(200);
  double backoff_multiplier = 2.0;
  absl::Duration max_backoff = absl::Seconds(5);
  // How long a remote entry's server may stay UNAVAILABLE (down, restarting) before its
  // call fails: while it is, attempts are retried with backoff without counting against
  // max_attempts, and the call fails with UNAVAILABLE naming the address once the server
  // has not come back within this. 0 (the default): UNAVAILABLE counts as any other
  // failed attempt. Run configs set it (reward.server_wait_s, default 60 s).
  absl::Duration server_wait = absl::ZeroDuration();
  // Asked with the server's address before each retry while it is UNAVAILABLE. A non-OK
  // status (a supervisor that gave up restarting the server) ends the wait at once and
  // fails the call with that code and message. Empty: wait up to server_wait. Must be
  // thread-safe.
  std::function<absl::Status(const std::string& address)> check_server;
  // Bytes of one remote Score request at most: a remote entry's batch is split into calls
  // of <= kMaxScoreBatchItems items whose serialized size stays within this. Keep it at
  // or below the servers' own limit (RewardServerOptions::max_request_bytes, default
  // kDefaultMaxScoreRequestBytes, also 64 MiB); an item that alone exceeds it fails the
  // batch with RESOURCE_EXHAUSTED without being sent. In [64 KiB, 2 GiB).
  int64_t max_request_bytes = int64_t{64} << 20;
  // Remote calls in flight at once per remote entry, across all ScoreBatch callers; >= 1.
  int max_concurrent_calls_per_entry = 4;
  // Threads that run in-process entries; >= 1. Shared by all callers.
  int num_local_threads = 4;

  // INVALID_ARGUMENT naming the entry (by index and name) and the field otherwise.
  absl::Status Validate() const;
};

// One batch's scores through the router: what ScoreBatch returns, and each entry's own
// result as the entry returned it (unweighted), so callers can report every reward
// source on its own.
struct RoutedScores {
  std::vector<RewardResult> combined;                // [input]
  std::vector<std::vector<RewardResult>> by_entry;  // [entry in options().entries order][input]
};

class RewardRouter {
 public:
  // Validates `options`, builds the in-process functions and the remote clients. Does
  // not contact the servers: an unreachable one fails its first ScoreBatch.
  static absl::StatusOr<std::unique_ptr<RewardRouter>> Create(const RewardRouterOptions& options);
  ~RewardRouter();
  RewardRouter(const RewardRouter&) = delete;
  RewardRouter& operator=(const RewardRouter&) = delete;

  // Scores every input against every entry at once: each remote entry in batched calls
  // of <= kMaxScoreBatchItems items and <= max_request_bytes, the in-process entries on
  // the local threads.
  // Result i belongs to inputs[i]: score = sum(weight * entry score); components are
  // each entry's weighted score under its name, then its own components as "name/part".
  // A remote call that fails (deadline, unavailable, server error, malformed or
  // non-finite result) is retried with backoff up to max_attempts (an UNAVAILABLE server
  // for up to server_wait instead); errors that retrying
  // cannot fix (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED) are
  // not. Then the whole call fails with the last status's code and a message naming the
  // entry, its address and that status; an in-process error or a non-finite score fails
  // it too, naming the entry and the item. Never a partial or zero-filled result.
  // Thread-safe.
  absl::StatusOr<std::vector<RewardResult>> ScoreBatch(const std::vector<RewardInput>& inputs);
  // ScoreBatch, also keeping each entry's unweighted results. Same calls, retries and
  // errors. Thread-safe.
  absl::StatusOr<RoutedScores> ScoreBatchByEntry(const std::vector<RewardInput>& inputs);

  const RewardRouterOptions& options() const { return options_; }

 private:
  struct Entry;
  class LocalPool;
  explicit RewardRouter(const RewardRouterOptions& options);

  RewardRouterOptions options_;
  std::vector<std::unique_ptr<Entry>> entries_;
  std::unique_ptr<LocalPool> pool_;  // last: its threads stop before the entries go
};

}  // namespace lightrl
