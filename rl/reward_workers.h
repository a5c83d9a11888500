// The `lightrl reward-worker` processes of a spawn-mode run (fleet.spawn_reward_workers),
// one per built-in reward kind: starts them, learns their addresses from the run's
// coordinator, restarts one that died on the same address (a bounded number of times)
// and stops them all. Restarts happen on a thread of its own that lives as long as the
// workers, since a child's parent-death signal follows the thread that forked it. Owns
// those processes only, not the coordinator or the scoring; torch-free and
// protobuf-free.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lightrl {

class Coordinator;

struct RewardWorkersOptions {
  // The lightrl executable the workers run.
  std::string exe;
  // One worker per kind, registered as "reward-local-KIND".
  std::vector<std::string> kinds;
  // Handed to the workers (LIGHTRL_AUTH_TOKEN), never on their command line.
  std::string auth_token;
  // Kind -> the options object of its worker (reward/reward_registry.h), passed as
  // --options JSON, or past kMaxInlineRewardOptionsBytes as --options-file (a 0600 file
  // in log_dir), so command lines stay short. Kinds absent: their defaults.
  std::map<std::string, std::string> options_json;
  // --max-request-mb of the workers.
  int64_t max_request_mb = 64;
  // Each worker appends its output to LOG_DIR/reward-local-KIND.log.
  std::string log_dir;
  // How long the first start may take until every worker has registered.
  absl::Duration start_timeout = absl::Seconds(300);
  // Restarts of each worker over the run; >= 0. One more death fails its scoring.
  int max_restarts = 3;
};

// Larger options objects go to a worker as a file, not on its command line.
inline constexpr size_t kMaxInlineRewardOptionsBytes = 4096;

class RewardWorkers {
 public:
  // Starts a worker per kind registering with `coordinator` (not owned; must outlive
  // this) and waits until all have registered; DEADLINE_EXCEEDED naming the log folder
  // otherwise.
  static absl::StatusOr<std::unique_ptr<RewardWorkers>> Start(const RewardWorkersOptions& options,
                                                              Coordinator* coordinator);
  // Stops restarting, then stops every worker.
  ~RewardWorkers();

  // Built-in kind -> "host:port" of its worker; a restarted worker keeps its address.
  std::map<std::string, std::string> Addresses() const;
  // The process serving `kind` now; -1 for a kind without a worker.
  pid_t Pid(const std::string& kind) const;

  // For a caller that finds the server at `address` unavailable (the reward router's
  // check_server): OK while its worker runs or is being restarted (the caller retries
  // until it answers); UNAVAILABLE naming the worker, its address, how it ended and
  // fleet.reward_worker_restarts once it died past its restarts. OK for an address of no
  // worker here. Thread-safe.
  absl::Status Check(const std::string& address) const;

 private:
  struct Worker {
    std::string kind, id, address, log_path;
    std::string options_file;  // --options-file, when its options are too long to inline
    pid_t pid = -1;
    int restarts = 0;
    std::string last_exit;  // how the latest process ended; "" while it runs
  };

  explicit RewardWorkers(const RewardWorkersOptions& options) : options_(options) {}
  std::vector<std::string> Argv(const Worker& worker, const std::string& listen) const;
  // Every poll interval until stopping_: reaps dead workers, reports each on stderr with
  // its exit status and restarts it on its address while it has restarts left.
  void RunMonitor();
  void Restart(Worker& worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const RewardWorkersOptions options_;
  std::string coordinator_address_;  // where the workers register
  mutable absl::Mutex mu_;
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread monitor_;
};

}  // namespace lightrl
