// What a run needs started as other processes, said without command lines: the rollout
// and reward workers of a spawn-mode fleet and the managed Python reward servers. The
// library fills these plain structs; the `lightrl` CLI implements the launcher
// (rl/tools/process_launcher.h), which alone knows the executables, their flags, how
// processes are watched and restarted. Torch-free and protobuf-free.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lightrl {

class Coordinator;

// Processes a launcher started. Destroying the handle stops them.
class LaunchedWorkers {
 public:
  virtual ~LaunchedWorkers() = default;
  // Name (reward kind, reward server name) -> "host:port" it serves; a restarted process
  // keeps its address. Empty for workers that register with a coordinator instead.
  virtual std::map<std::string, std::string> Addresses() const = 0;
  // For a caller that finds the server at `address` unavailable: OK while its process
  // runs or is being restarted; UNAVAILABLE naming the process, how it ended, its restart
  // bound and its log once it died past its restarts. OK for an address of no process
  // here. Thread-safe.
  virtual absl::Status Check(const std::string& address) const = 0;
};
using LaunchedWorkersPtr = std::unique_ptr<LaunchedWorkers>;

// Rollout workers that register with the run's coordinator (role rollout).
struct RolloutWorkerLaunch {
  int64_t count = 0;
  std::string coordinator_address;
  // Reaches the workers in their environment, never on a command line.
  std::string auth_token;
  // Groups each takes at once.
  int64_t capacity = 1;
  // Worker k runs on devices[k % size] ("cpu", "cuda:1").
  std::vector<std::string> devices = {"cpu"};
  std::string dtype = "float32";
  int64_t max_num_seqs = 256;
  // tokenizer.json for stop strings; empty: none.
  std::string tokenizer;
  // Each worker appends its output to LOG_DIR/rollout-local-K.log (its other ranks' to
  // rollout-local-K-rankT.log).
  std::string log_dir;
  // Processes of each worker: a tensor-parallel instance (`lightrl rollout-worker --tp`)
  // when tp > 1, an expert-parallel one (`--ep`) when ep > 1 (both: equal, over the same
  // ranks), its rank t on devices[(k * n + t) % size], each loading its shard of
  // `model_dir` (required then).
  int64_t tp = 1;
  int64_t ep = 1;
  std::string model_dir;
  // numerics.batch_invariant: a multi-process instance runs the mode it starts with
  // (`--batch-invariant` on every rank); single-process workers take it with the weights.
  bool batch_invariant = false;
};

// One reward worker per built-in kind, registered with `coordinator` (role reward).
struct RewardWorkerLaunch {
  Coordinator* coordinator = nullptr;  // not owned; outlives the workers
  std::vector<std::string> kinds;
  std::string auth_token;
  // Kind -> the JSON options object of its worker (reward/reward_registry.h); kinds
  // absent use their defaults.
  std::map<std::string, std::string> options_json;
  int64_t max_request_mb = 64;
  std::string log_dir;  // LOG_DIR/reward-local-KIND.log
  // How long the first start may take until every worker has registered.
  absl::Duration start_timeout = absl::Seconds(300);
  // Restarts of each worker over the run; one more death fails its scoring.
  int max_restarts = 3;
};

// A reward function in a Python file, served over lightrl.v1.RewardService on loopback
// by the managed server (reward/python/function_server.py).
struct PythonRewardLaunch {
  std::string name;      // reward.servers.NAME: the key of Addresses()
  std::string file;      // the user's .py file
  std::string function = "score";
  std::string interpreter;  // empty: the Python lightrl was built with
  int64_t max_request_mb = 64;
  std::string log_dir;   // LOG_DIR/reward-python-NAME.log
  // How long a start may take until the server answers Health.
  absl::Duration start_timeout = absl::Seconds(60);
  int max_restarts = 3;
};

class WorkerLauncher {
 public:
  virtual ~WorkerLauncher() = default;
  // Starts launch.count rollout workers; returns once they are started (the caller waits
  // for their registration).
  virtual absl::StatusOr<LaunchedWorkersPtr> StartRolloutWorkers(const RolloutWorkerLaunch& launch) = 0;
  // Starts the reward workers and waits until all have registered; they are restarted on
  // their address when one dies, up to launch.max_restarts times.
  virtual absl::StatusOr<LaunchedWorkersPtr> StartRewardWorkers(const RewardWorkerLaunch& launch) = 0;
  // Starts one managed server per entry and waits until each answers Health; restarted
  // on its address like the reward workers.
  virtual absl::StatusOr<LaunchedWorkersPtr> StartPythonRewards(
      const std::vector<PythonRewardLaunch>& launches) = 0;
};

}  // namespace lightrl
