// The reward server processes the `lightrl` CLI keeps alive for a run: the `lightrl
// reward-worker`s of a spawn-mode fleet (fleet.spawn_reward_workers, one per built-in
// kind, found through the run's coordinator) and the managed Python reward servers
// (reward.servers.NAME.python, found through an address file they write, then asked for
// Health). Restarts one that died on the same address (a bounded number of times) and
// stops them all. Restarts happen on a thread of its own that lives as long as the
// servers, since a child's parent-death signal follows the thread that forked it. Owns
// those processes only, not the coordinator or the scoring; torch-free and
// protobuf-free.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rl/worker_launcher.h"

namespace lightrl {

struct RewardWorkersOptions : RewardWorkerLaunch {
  // The lightrl executable the workers run.
  std::string exe;
};

// Where the managed Python reward server lives and what runs it.
struct PythonRewardServerProgram {
  // The interpreter of entries that name none.
  std::string interpreter;
  // reward/python/function_server.py.
  std::string script;
};

// Larger options objects go to a worker as a file, not on its command line.
inline constexpr size_t kMaxInlineRewardOptionsBytes = 4096;

class RewardWorkers final : public LaunchedWorkers {
 public:
  // Starts a worker per kind registering with options.coordinator (which must outlive
  // this) and waits until all have registered; DEADLINE_EXCEEDED naming the log folder
  // otherwise.
  static absl::StatusOr<std::unique_ptr<RewardWorkers>> Start(const RewardWorkersOptions& options);
  // Starts a managed server per entry and waits until each has written its address and
  // answers Health; an error names the entry, its file and the end of its log.
  static absl::StatusOr<std::unique_ptr<RewardWorkers>> StartPython(
      const std::vector<PythonRewardLaunch>& launches, const PythonRewardServerProgram& program);
  // Stops restarting, then stops every server.
  ~RewardWorkers() override;

  // Kind or server name -> "host:port"; a restarted server keeps its address.
  std::map<std::string, std::string> Addresses() const override;
  // The process serving `name` now; -1 for a name without a server.
  pid_t Pid(const std::string& name) const;
  // See LaunchedWorkers::Check.
  absl::Status Check(const std::string& address) const override;

 private:
  struct Worker {
    std::string name, id, address, log_path;
    // The command line that serves on `listen` ("127.0.0.1:0" first, then its address).
    std::function<std::vector<std::string>(const std::string& listen)> argv;
    std::string auth_token;     // in its environment
    int max_restarts = 0;
    std::string restarts_key;   // the config key that bounds its restarts, for messages
    pid_t pid = -1;
    int restarts = 0;
    std::string last_exit;  // how the latest process ended; "" while it runs
  };

  RewardWorkers() = default;
  // Every poll interval until stopping_: reaps dead servers, reports each with its exit
  // status and restarts it on its address while it has restarts left.
  void RunMonitor();
  void Restart(Worker& worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StartMonitor();

  mutable absl::Mutex mu_;
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread monitor_;
};

}  // namespace lightrl
