#include "rl/tools/reward_workers.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/status.h"
#include "reward/reward_client.h"
#include "rl/tools/child_process.h"
#include "rollout/coordinator.h"

namespace lightrl {
namespace {

// How often the monitor looks for dead servers, and a start for its address.
constexpr absl::Duration kPollInterval = absl::Milliseconds(100);
// The end of a log quoted in an error.
constexpr size_t kLogTailBytes = 2000;

std::string LogTail(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return absl::StrCat("(cannot read ", path, ")");
  if (text->size() > kLogTailBytes) *text = "..." + text->substr(text->size() - kLogTailBytes);
  return std::string(absl::StripTrailingAsciiWhitespace(*text));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RewardWorkers>> RewardWorkers::Start(
    const RewardWorkersOptions& options) {
  if (options.max_restarts < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward workers: max_restarts must be >= 0, got ", options.max_restarts));
  }
  if (options.coordinator == nullptr) {
    return absl::InvalidArgumentError("reward workers: no coordinator to register with");
  }
  RETURN_IF_ERROR(MakeDirs(options.log_dir));
  Coordinator* coordinator = options.coordinator;
  std::unique_ptr<RewardWorkers> workers(new RewardWorkers());
  {
    absl::MutexLock lock(&workers->mu_);
    for (const std::string& kind : options.kinds) {
      Worker worker;
      worker.name = kind;
      worker.id = absl::StrCat("reward-local-", kind);
      worker.log_path = JoinPath(options.log_dir, worker.id + ".log");
      worker.auth_token = options.auth_token;
      worker.max_restarts = options.max_restarts;
      worker.restarts_key = "fleet.reward_worker_restarts";
      std::vector<std::string> options_flag;
      if (auto it = options.options_json.find(kind); it != options.options_json.end()) {
        if (it->second.size() > kMaxInlineRewardOptionsBytes) {
          const std::string file = JoinPath(options.log_dir, worker.id + ".options.json");
          RETURN_IF_ERROR(WriteFileAtomic(file, it->second));
          ::chmod(file.c_str(), 0600);
          options_flag = {"--options-file", file};
        } else {
          options_flag = {"--options", it->second};
        }
      }
      worker.argv = [exe = options.exe, kind, id = worker.id,
                     coordinator_address = coordinator->address(),
                     max_request_mb = options.max_request_mb,
                     options_flag](const std::string& listen) {
        std::vector<std::string> argv = {
            exe, "reward-worker", "--listen", listen, "--kind", kind,
            "--coordinator", coordinator_address, "--worker-id", id,
            "--max-request-mb", absl::StrCat(max_request_mb)};
        argv.insert(argv.end(), options_flag.begin(), options_flag.end());
        return argv;
      };
      ASSIGN_OR_RETURN(worker.pid, SpawnChild(worker.argv("127.0.0.1:0"), worker.log_path,
                                              worker.auth_token));
      workers->workers_.push_back(std::move(worker));
    }
  }
  const int count = static_cast<int>(options.kinds.size());
  if (!coordinator->WaitForWorkers(kRewardRole, count, options.start_timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "fleet: ", coordinator->Workers(kRewardRole).size(), " of ", count,
        " spawned reward workers registered within fleet.worker_wait_s = ",
        absl::FormatDuration(options.start_timeout), " (see ", options.log_dir, ")"));
  }
  {
    absl::MutexLock lock(&workers->mu_);
    for (const WorkerRecord& record : coordinator->Workers(kRewardRole)) {
      for (Worker& worker : workers->workers_) {
        if (record.id == worker.id) worker.address = record.address;
      }
    }
  }
  workers->StartMonitor();
  return workers;
}

absl::StatusOr<std::unique_ptr<RewardWorkers>> RewardWorkers::StartPython(
    const std::vector<PythonRewardLaunch>& launches, const PythonRewardServerProgram& program) {
  std::unique_ptr<RewardWorkers> servers(new RewardWorkers());
  std::vector<std::string> address_files;
  {
    absl::MutexLock lock(&servers->mu_);
    for (const PythonRewardLaunch& launch : launches) {
      const std::string key = absl::StrCat("reward.servers.", launch.name);
      if (launch.max_restarts < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(key, ".restarts must be >= 0, got ", launch.max_restarts));
      }
      RETURN_IF_ERROR(MakeDirs(launch.log_dir));
      Worker server;
      server.name = launch.name;
      server.id = absl::StrCat("reward-python-", launch.name);
      server.log_path = JoinPath(launch.log_dir, server.id + ".log");
      server.max_restarts = launch.max_restarts;
      server.restarts_key = key + ".restarts";
      const std::string address_file = JoinPath(launch.log_dir, server.id + ".address");
      ::unlink(address_file.c_str());
      address_files.push_back(address_file);
      const std::string interpreter =
          launch.interpreter.empty() ? program.interpreter : launch.interpreter;
      server.argv = [interpreter, script = program.script, launch,
                     address_file](const std::string& listen) {
        return std::vector<std::string>{
            interpreter, script, "--file", launch.file, "--function", launch.function,
            "--listen", listen, "--address-file", address_file,
            "--max-request-mb", absl::StrCat(launch.max_request_mb)};
      };
      absl::StatusOr<pid_t> pid = SpawnChild(server.argv("127.0.0.1:0"), server.log_path, "");
      if (!pid.ok()) {
        return absl::Status(pid.status().code(),
                            absl::StrCat(key, ": cannot start ", interpreter, ": ",
                                         pid.status().message()));
      }
      server.pid = *pid;
      servers->workers_.push_back(std::move(server));
    }
  }
  for (size_t i = 0; i < launches.size(); ++i) {
    const PythonRewardLaunch& launch = launches[i];
    const std::string what = absl::StrCat("reward.servers.", launch.name, ": the Python reward ",
                                          launch.file, " (function ", launch.function, ")");
    const absl::Time deadline = absl::Now() + launch.start_timeout;
    std::string address;
    while (address.empty()) {
      {
        absl::MutexLock lock(&servers->mu_);
        Worker& server = servers->workers_[i];
        int wait_status = 0;
        if (::waitpid(server.pid, &wait_status, WNOHANG) == server.pid) {
          server.last_exit = DescribeExit(wait_status);
          if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 127) {
            return absl::FailedPreconditionError(
                absl::StrCat(what, ": cannot run its interpreter ", server.argv("")[0],
                             " (exit status 127)"));
          }
          return absl::FailedPreconditionError(
              absl::StrCat(what, " ", server.last_exit, " before serving; the end of ",
                           server.log_path, ":\n", LogTail(server.log_path)));
        }
        if (absl::StatusOr<std::string> text = ReadFile(address_files[i]); text.ok()) {
          address = std::string(absl::StripAsciiWhitespace(*text));
          server.address = address;
        }
        if (address.empty() && absl::Now() > deadline) {
          return absl::DeadlineExceededError(absl::StrCat(
              what, " did not start listening within ", absl::FormatDuration(launch.start_timeout),
              "; the end of ", server.log_path, ":\n", LogTail(server.log_path)));
        }
      }
      if (address.empty()) absl::SleepFor(kPollInterval / 2);
    }
    // Health-checked before use: a server that listens but cannot answer fails here.
    RewardClientOptions client_options;
    client_options.address = address;
    client_options.deadline = absl::Seconds(5);
    client_options.max_attempts = 1;
    ASSIGN_OR_RETURN(std::unique_ptr<RewardClient> client, RewardClient::Create(client_options));
    absl::Status health = absl::OkStatus();
    while (true) {
      absl::StatusOr<RewardServerHealth> answer = client->Health();
      if (answer.ok() && answer->serving) break;
      health = answer.ok() ? absl::UnavailableError("Health says it is not serving") : answer.status();
      if (absl::Now() > deadline) {
        return absl::UnavailableError(absl::StrCat(what, " on ", address,
                                                   " does not answer Health: ", health.message()));
      }
      absl::SleepFor(kPollInterval);
    }
    LogInfo("lightrl run: Python reward %s (%s, function %s) serving on %s", launch.name.c_str(),
            launch.file.c_str(), launch.function.c_str(), address.c_str());
  }
  servers->StartMonitor();
  return servers;
}

void RewardWorkers::StartMonitor() {
  monitor_ = std::thread([this] { RunMonitor(); });
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

std::map<std::string, std::string> RewardWorkers::Addresses() const {
  absl::MutexLock lock(&mu_);
  std::map<std::string, std::string> addresses;
  for (const Worker& worker : workers_) addresses[worker.name] = worker.address;
  return addresses;
}

pid_t RewardWorkers::Pid(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  for (const Worker& worker : workers_) {
    if (worker.name == name) return worker.pid;
  }
  return -1;
}

absl::Status RewardWorkers::Check(const std::string& address) const {
  absl::MutexLock lock(&mu_);
  for (const Worker& worker : workers_) {
    if (worker.address != address || worker.last_exit.empty()) continue;
    return absl::UnavailableError(absl::StrCat(
        "reward worker ", worker.id, " (", worker.address, ") ", worker.last_exit, " after ",
        worker.restarts, " restart(s); ", worker.restarts_key, " = ", worker.max_restarts,
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
      if (worker.restarts < worker.max_restarts) Restart(worker);
    }
  }
}

void RewardWorkers::Restart(Worker& worker) {
  // The same address, so the router's connection finds the new process.
  absl::StatusOr<pid_t> pid = SpawnChild(worker.argv(worker.address), worker.log_path,
                                         worker.auth_token);
  ++worker.restarts;
  if (!pid.ok()) {
    worker.last_exit = absl::StrCat(worker.last_exit, ", and its restart failed: ",
                                    pid.status().message());
    return;
  }
  LogInfo("lightrl run: restarted reward worker %s on %s as pid %d (restart %d of %d)",
          worker.id.c_str(), worker.address.c_str(), static_cast<int>(*pid), worker.restarts,
          worker.max_restarts);
  worker.pid = *pid;
  worker.last_exit.clear();
}

}  // namespace lightrl
