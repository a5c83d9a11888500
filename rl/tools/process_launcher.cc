#include "rl/tools/process_launcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"
#include "rl/tools/child_process.h"
#include "rl/tools/reward_workers.h"

namespace lightrl {
namespace {

// Rollout workers register with the coordinator, which is how the run finds them; this
// handle only stops them.
class RolloutWorkerProcesses final : public LaunchedWorkers {
 public:
  ~RolloutWorkerProcesses() override { StopChildren(pids); }
  std::map<std::string, std::string> Addresses() const override { return {}; }
  absl::Status Check(const std::string& /*address*/) const override { return absl::OkStatus(); }

  std::vector<pid_t> pids;  // started so far; stopped with the handle
};

class ProcessLauncher final : public WorkerLauncher {
 public:
  explicit ProcessLauncher(ProcessLauncherOptions options) : options_(std::move(options)) {}

  absl::StatusOr<LaunchedWorkersPtr> StartRolloutWorkers(const RolloutWorkerLaunch& launch) override {
    if (launch.devices.empty()) return absl::InvalidArgumentError("rollout workers: no devices");
    RETURN_IF_ERROR(MakeDirs(launch.log_dir));
    const int64_t n = std::max(launch.tp, launch.ep);  // processes per worker
    if (n > 1 && launch.model_dir.empty()) {
      return absl::InvalidArgumentError("multi-process rollout workers need a model_dir to load");
    }
    auto workers = std::make_unique<RolloutWorkerProcesses>();
    for (int64_t k = 0; k < launch.count; ++k) {
      const std::string id = absl::StrCat("rollout-local-", k);
      // Every rank of an instance gets the same flags; only rank 0 serves and registers.
      const int port = n > 1 ? FreeLoopbackPort() : 0;
      if (port < 0) return absl::InternalError("no free loopback port for a rollout instance");
      for (int64_t t = 0; t < n; ++t) {
        const std::string& device = launch.devices[(k * n + t) % launch.devices.size()];
        std::vector<std::string> argv = {
            options_.exe, "rollout-worker", "--listen", "127.0.0.1:0",
            "--coordinator", launch.coordinator_address, "--worker-id", id,
            "--capacity", absl::StrCat(launch.capacity), "--device", device,
            "--dtype", launch.dtype, "--max-num-seqs", absl::StrCat(launch.max_num_seqs)};
        if (!launch.tokenizer.empty()) {
          argv.push_back("--tokenizer");
          argv.push_back(launch.tokenizer);
        }
        std::vector<std::string> env;
        if (n > 1) {
          if (launch.tp > 1) argv.insert(argv.end(), {"--tp", absl::StrCat(launch.tp)});
          if (launch.ep > 1) argv.insert(argv.end(), {"--ep", absl::StrCat(launch.ep)});
          if (launch.batch_invariant) argv.push_back("--batch-invariant");
          argv.insert(argv.end(), {"--model", launch.model_dir});
          env = {absl::StrCat("RANK=", t), absl::StrCat("LOCAL_RANK=", t),
                 absl::StrCat("WORLD_SIZE=", n), "MASTER_ADDR=127.0.0.1",
                 absl::StrCat("MASTER_PORT=", port)};
        }
        const std::string log = t == 0 ? id + ".log" : absl::StrCat(id, "-rank", t, ".log");
        ASSIGN_OR_RETURN(pid_t pid, SpawnChild(argv, JoinPath(launch.log_dir, log),
                                               launch.auth_token, env));
        workers->pids.push_back(pid);
      }
    }
    return LaunchedWorkersPtr(std::move(workers));
  }

  absl::StatusOr<LaunchedWorkersPtr> StartRewardWorkers(const RewardWorkerLaunch& launch) override {
    RewardWorkersOptions options;
    static_cast<RewardWorkerLaunch&>(options) = launch;
    options.exe = options_.exe;
    ASSIGN_OR_RETURN(std::unique_ptr<RewardWorkers> workers, RewardWorkers::Start(options));
    return LaunchedWorkersPtr(std::move(workers));
  }

  absl::StatusOr<LaunchedWorkersPtr> StartPythonRewards(
      const std::vector<PythonRewardLaunch>& launches) override {
    PythonRewardServerProgram program;
    program.interpreter = options_.python;
    program.script = options_.python_reward_server;
    if (!FileExists(program.script)) {
      return absl::NotFoundError(absl::StrCat(
          "the managed Python reward server ", program.script,
          " is missing (it ships in the lightrl source tree under reward/python/)"));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<RewardWorkers> servers,
                     RewardWorkers::StartPython(launches, program));
    return LaunchedWorkersPtr(std::move(servers));
  }

 private:
  ProcessLauncherOptions options_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<WorkerLauncher>> MakeProcessLauncher(
    const ProcessLauncherOptions& options) {
  ProcessLauncherOptions resolved = options;
  if (resolved.exe.empty()) resolved.exe = SelfExe();
  if (resolved.exe.empty()) {
    return absl::InternalError("cannot find the lightrl executable (/proc/self/exe)");
  }
  if (resolved.python.empty()) resolved.python = LIGHTRL_PYTHON;
  if (resolved.python_reward_server.empty()) {
    resolved.python_reward_server =
        JoinPath(LIGHTRL_SOURCE_DIR, "reward/python/function_server.py");
  }
  return std::unique_ptr<WorkerLauncher>(new ProcessLauncher(std::move(resolved)));
}

}  // namespace lightrl
