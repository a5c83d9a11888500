#include "rl/reward_workers.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/log.h"
#include "rl/child_process.h"
#include "rollout/coordinator.h"

namespace lightrl {
namespace {

// How often the monitor looks for dead workers.
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);

}  // namespace

absl::StatusOr<std::unique_ptr<RewardWorkers>> RewardWorkers::Start(
    const RewardWorkersOptions& options, Coordinator* coordinator) {
  if (options.max_restarts < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward workers: max_restarts must be >= 0, got ", options.max_restarts));
  }
  if (absl::Status made = MakeDirs(options.log_dir); !made.ok()) return made;
  std::unique_ptr<RewardWorkers> workers(new RewardWorkers(options));
  workers->coordinator_address_ = coordinator->address();
  absl::MutexLock lock(&workers->mu_);
  for (const std::string& kind : options.kinds) {
    Worker worker;
    worker.kind = kind;
    worker.id = absl::StrCat("reward-local-", kind);
    worker.log_path = JoinPath(options.log_dir, worker.id + ".log");
    if (auto it = options.options_json.find(kind);
        it != options.options_json.end() && it->second.size() > kMaxInlineRewardOptionsBytes) {
      worker.options_file = JoinPath(options.log_dir, worker.id + ".options.json");
      if (absl::Status written = WriteFileAtomic(worker.options_file, it->second); !written.ok()) {
        return written;
      }
      ::chmod(worker.options_file.c_str(), 0600);
    }
    absl::StatusOr<pid_t> pid =
        SpawnChild(workers->Argv(worker, "127.0.0.1:0"), worker.log_path, options.auth_token);
    if (!pid.ok()) return pid.status();
    worker.pid = *pid;
    workers->workers_.push_back(std::move(worker));
  }
  const int count = static_cast<int>(options.kinds.size());
  if (!coordinator->WaitForWorkers(kRewardRole, count, options.start_timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "fleet: ", coordinator->Workers(kRewardRole).size(), " of ", count,
        " spawned reward workers registered within fleet.worker_wait_s = ",
        absl::FormatDuration(options.start_timeout), " (see ", options.log_dir, ")"));
  }
  for (const WorkerRecord& record : coordinator->Workers(kRewardRole)) {
    for (Worker& worker : workers->workers_) {
      if (record.id == worker.id) worker.address = record.address;
    }
  }
  RewardWorkers* raw = workers.get();
  workers->monitor_ = std::thread([raw] { raw->RunMonitor(); });
  return workers;
}

RewardWorkers::~RewardWorkers() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (monitor_.joinable()) monitor_.join();
  std::vector<pid_t> pids;
  {
    absl::MutexLock lock(&mu_);
    for (const Worker& worker : workers_) {
      if (worker.last_exit.empty()) pids.push_back(worker.pid);
    }
  }
  StopChildren(pids);
}

std::vector<std::string> RewardWorkers::Argv(const Worker& worker,
                                             const std::string& listen) const {
  std::vector<std::string> argv = {
      options_.exe, "reward-worker", "--listen", listen, "--kind", worker.kind,
      "--coordinator", coordinator_address_, "--worker-id", worker.id,
      "--max-request-mb", absl::StrCat(options_.max_request_mb)};
  if (!worker.options_file.empty()) {
    argv.push_back("--options-file");
    argv.push_back(worker.options_file);
  } else if (auto it = options_.options_json.find(worker.kind); it != options_.options_json.end()) {
    argv.push_back("--options");
    argv.push_back(it->second);
  }
  return argv;
}

std::map<std::string, std::string> RewardWorkers::Addresses() const {
  absl::MutexLock lock(&mu_);
  std::map<std::string, std::string> addresses;
  for (const Worker& worker : workers_) addresses[worker.kind] = worker.address;
  return addresses;
}

pid_t RewardWorkers::Pid(const std::string& kind) const {
  absl::MutexLock lock(&mu_);
  for (const Worker& worker : workers_) {
    if (worker.kind == kind) return worker.pid;
  }
  return -1;
}

absl::Status RewardWorkers::Check(const std::string& address) const {
  absl::MutexLock lock(&mu_);
  for (const Worker& worker : workers_) {
    if (worker.address != address || worker.last_exit.empty()) continue;
    return absl::UnavailableError(absl::StrCat(
        "reward worker ", worker.id, " (", worker.address, ") ", worker.last_exit, " after ",
        worker.restarts, " restart(s); fleet.reward_worker_restarts = ", options_.max_restarts,
        " allows no more (log: ", worker.log_path, ")"));
  }
  return absl::OkStatus();
}

void RewardWorkers::RunMonitor() {
  absl::MutexLock lock(&mu_);
  while (!mu_.AwaitWithTimeout(absl::Condition(&stopping_), kPollInterval)) {
    for (Worker& worker : workers_) {
      int wait_status = 0;
      if (!worker.last_exit.empty() ||
          ::waitpid(worker.pid, &wait_status, WNOHANG) != worker.pid) {
        continue;
      }
      worker.last_exit = DescribeExit(wait_status);
      LogWarning("lightrl run: reward worker %s (pid %d, %s) %s (log: %s)",
                 worker.id.c_str(), static_cast<int>(worker.pid), worker.address.c_str(),
                 worker.last_exit.c_str(), worker.log_path.c_str());
      if (worker.restarts < options_.max_restarts) Restart(worker);
    }
  }
}

void RewardWorkers::Restart(Worker& worker) {
  // The same address, so the router's connection finds the new process.
  absl::StatusOr<pid_t> pid =
      SpawnChild(Argv(worker, worker.address), worker.log_path, options_.auth_token);
  ++worker.restarts;
  if (!pid.ok()) {
    worker.last_exit = absl::StrCat(worker.last_exit, ", and its restart failed: ",
                                    pid.status().message());
    return;
  }
  LogInfo("lightrl run: restarted reward worker %s on %s as pid %d (restart %d of %d)",
          worker.id.c_str(), worker.address.c_str(), static_cast<int>(*pid), worker.restarts,
          options_.max_restarts);
  worker.pid = *pid;
  worker.last_exit.clear();
}

}  // namespace lightrl
