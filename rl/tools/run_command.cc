// `lightrl run --config X.yaml [--set KEY=VALUE]... [--dry-run] [--resume [--resume-fallback]]
// [--nproc N]` and
// `lightrl replay --config X.yaml --rollouts DIR [--output DIR] [--steps A:B] [--versions A:B]
// [--skip-corrupt] [--resume]`; and what SIGINT/SIGTERM do to them (a checkpoint at the
// next safe point, then exit; a second signal exits at once).
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "common/log.h"
#include "common/status.h"
#include "rl/run_config.h"
#include "rl/tools/child_process.h"
#include "rl/tools/commands.h"
#include "rl/tools/dry_run.h"
#include "rl/tools/flags.h"
#include "rl/tools/process_launcher.h"
#include "rl/trainer.h"

namespace lightrl {
namespace {

constexpr const char* kRunUsage =
    "usage: lightrl run --config X.yaml [--resume [--resume-fallback]] [--no-progress]\n"
    "                   [--set KEY=VALUE]... [--dry-run]\n"
    "                   [--nproc N] [--health-timeout S]\n"
    "Validates the whole config, then runs SFT warm-up (if configured) and the RL loop,\n"
    "writing checkpoints, metrics (JSONL + TensorBoard) and the rollout log under\n"
    "run.output_dir. --resume continues exactly from the latest checkpoint there, after\n"
    "checking every file against the checkpoint's manifest.json (CRC-32C); a corrupt one\n"
    "stops the run naming the file and the previous checkpoint, which --resume-fallback\n"
    "resumes from instead (its later steps are trained again).\n"
    "--set KEY=VALUE (repeatable) sets a config key over the file, e.g. --set\n"
    "rollout.group_size=4 --set optimizer.lr=1e-5; VALUE is read as YAML (a number, a\n"
    "string, [a, b], {k: v}), errors name the --set, and config.resolved.yaml shows the\n"
    "result. --dry-run validates and resolves the config, prints the plan of the run\n"
    "(model size, layout, steps, output folder, reward sources) and the resolved\n"
    "config, and exits 0 without writing or starting anything.\n"
    "Learner processes: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun's variables)\n"
    "or the config's `distributed` section place this process; --nproc N starts N local\n"
    "ranks itself (rank 0 is the controller) on a free loopback port.\n"
    "Before anything is loaded, every reward server of reward.servers must answer a Health\n"
    "call within --health-timeout seconds (default 5; 0 skips the check).\n"
    "Ctrl-C (SIGINT) or SIGTERM writes a checkpoint after the current SFT or RL step and\n"
    "exits (status 130 or 143); --resume continues from it. A second one exits at once.\n";

constexpr const char* kReplayUsage =
    "usage: lightrl replay --config X.yaml --rollouts DIR [--output DIR] [--steps A:B]\n"
    "                      [--set KEY=VALUE]... [--dry-run]\n"
    "                      [--versions A:B] [--skip-corrupt] [--resume [--resume-fallback]]\n"
    "                      [--nproc N] [--health-timeout S]\n"
    "--set and --dry-run as for `lightrl run` (the plan names the replayed log).\n"
    "Trains on the groups of a rollout log, step by step, without generating; learner\n"
    "ranks as for `lightrl run`. It writes checkpoints, metrics and eval.json to --output\n"
    "(default: run.output_dir with \"-replay\" appended) and never to the run that holds\n"
    "the log, which it only reads; a folder holding another run is refused, --resume\n"
    "continues a replay of the same log there. It starts from the source run's checkpoint\n"
    "the first replayed record was sampled from (by policy version), else model.path or\n"
    "model.init_config with a warning. --steps A:B and --versions A:B replay only the\n"
    "records of steps A to B (as metrics.jsonl numbers them, from 1) and of policy\n"
    "versions A to B, both inclusive; either end may be left out. A record that fails its\n"
    "checksum stops the replay naming the file and byte offset; --skip-corrupt skips such\n"
    "records and reports how many. --health-timeout, Ctrl-C and SIGTERM as for `lightrl run`.\n";

// "A:B", "A:" or ":B" into [first, last] (inclusive); the left-out end stays as given.
bool ParseRange(const std::string& text, int64_t* first, int64_t* last) {
  const size_t colon = text.find(':');
  if (colon == std::string::npos || text.find(':', colon + 1) != std::string::npos) return false;
  const std::string a = text.substr(0, colon), b = text.substr(colon + 1);
  if (a.empty() && b.empty()) return false;
  if (!a.empty() && !absl::SimpleAtoi(a, first)) return false;
  if (!b.empty() && !absl::SimpleAtoi(b, last)) return false;
  return true;
}

// The first SIGINT/SIGTERM asks the run to stop at its next safe point; the trainer reads
// it. A second one ends the process at once.
std::atomic<int> stop_signal{0};

void OnStopSignal(int signal) {
  if (stop_signal.exchange(signal) == 0) {
    constexpr char kMessage[] =
        "\nstopping after the current step (a checkpoint is written first); press Ctrl-C again "
        "to exit at once without one\n";
    [[maybe_unused]] ssize_t n = ::write(2, kMessage, sizeof(kMessage) - 1);
    return;
  }
  constexpr char kMessage[] = "\nexiting at once: no checkpoint written\n";
  [[maybe_unused]] ssize_t n = ::write(2, kMessage, sizeof(kMessage) - 1);
  ::_exit(128 + signal);
}

void InstallStopHandlers() {
  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

// The --nproc launcher's ranks, for its signal handler.
constexpr int kMaxLocalRanks = 1024;
pid_t local_ranks[kMaxLocalRanks];
std::atomic<int> num_local_ranks{0};

// The launcher passes on a SIGINT/SIGTERM sent to it alone (kill, a scheduler) to its
// ranks; one from the terminal reached the ranks already (they share its process group).
void OnLauncherSignal(int signal, siginfo_t* info, void*) {
  if (info != nullptr && info->si_code == SI_KERNEL) return;
  const int n = num_local_ranks.load();
  for (int r = 0; r < n; ++r) ::kill(local_ranks[r], signal);
}

// torchrun for one host: starts `nproc` copies of this command (without --nproc) with
// RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, and waits for them. When
// one fails, the others are stopped; the exit code is the first failure's.
absl::Status LaunchLocalRanks(const std::vector<std::string>& args, int64_t nproc,
                              const char* name, const char* subcommand) {
  std::vector<std::string> child_args;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--nproc") {
      ++i;
      continue;
    }
    if (args[i].rfind("--nproc=", 0) == 0) continue;
    child_args.push_back(args[i]);
  }
  const int port = FreeLoopbackPort();
  if (port <= 0) {
    return absl::UnavailableError("--nproc: cannot find a free loopback port");
  }
  char exe[4096] = {0};
  if (::readlink("/proc/self/exe", exe, sizeof(exe) - 1) <= 0) {
    return absl::InternalError("--nproc: cannot find the lightrl executable");
  }
  std::vector<std::string> argv = {exe, subcommand};
  argv.insert(argv.end(), child_args.begin(), child_args.end());
  if (nproc > kMaxLocalRanks) {
    return absl::InvalidArgumentError(absl::StrCat("--nproc: at most ", kMaxLocalRanks, " local ranks, got ", nproc));
  }
  struct sigaction action {};
  action.sa_sigaction = OnLauncherSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART | SA_SIGINFO;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  std::vector<pid_t> pids;
  for (int64_t r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (pid_t p : pids) ::kill(p, SIGKILL);
      return absl::InternalError("--nproc: fork failed");
    }
    if (pid == 0) {
      // The ranks end with the launcher (a scheduler stopping it, say).
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<char*> cargs;
      for (const std::string& a : argv) cargs.push_back(const_cast<char*>(a.c_str()));
      cargs.push_back(nullptr);
      ::execv(exe, cargs.data());
      ::_exit(127);
    }
    pids.push_back(pid);
    local_ranks[r] = pid;
    num_local_ranks.store(static_cast<int>(r + 1));
  }
  LogInfo("%s: started %d learner ranks (master 127.0.0.1:%d)", name, nproc, port);
  int result = 0;
  size_t running = pids.size();
  while (running > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break;
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && result == 0) {
      result = code;
      for (size_t r = 0; r < pids.size(); ++r) {
        if (pids[r] == pid) LogError("%s: rank %d exited with status %d", name, r, code);
      }
      // SIGKILL: a rank takes SIGTERM as a request to checkpoint first, which waits for
      // the failed rank.
      for (pid_t p : pids) {
        if (p != pid) ::kill(p, SIGKILL);
      }
    }
  }
  if (result == 0) return absl::OkStatus();
  // Each rank has said why; the launcher exits with the first failure's own code.
  return WithExitCode(absl::AbortedError(""), result);
}

absl::Status Run(const std::vector<std::string>& args, bool replay) {
  const char* name = replay ? "lightrl replay" : "lightrl run";
  auto flags = replay ? Flags::Parse(args, {"config", "set", "rollouts", "nproc", "output", "steps", "versions",
                                            "health-timeout"},
                                     {"resume", "resume-fallback", "no-progress", "skip-corrupt", "dry-run"},
                                     {"set"})
                      : Flags::Parse(args, {"config", "set", "nproc", "health-timeout"},
                                     {"resume", "resume-fallback", "no-progress", "dry-run"},
                                     {"set"});
  if (!flags.ok()) return flags.status();
  if (flags->Has("resume-fallback") && !flags->Has("resume")) {
    return UsageError("--resume-fallback applies to --resume; pass both");
  }
  auto nproc = flags->GetInt("nproc", 1);
  if (!nproc.ok() || *nproc < 1) {
    return UsageError(absl::StrCat("--nproc must be an integer >= 1, got \"", flags->Get("nproc"), "\""));
  }
  auto health_timeout = flags->GetDouble("health-timeout", 5);
  if (!health_timeout.ok() || !(*health_timeout >= 0) || *health_timeout > 3600) {
    return UsageError(absl::StrCat("--health-timeout must be seconds in [0, 3600], got \"",
                                   flags->Get("health-timeout"), "\""));
  }
  // Flags are checked before any file is read: a usage error is one without I/O.
  std::pair<int64_t, int64_t> steps = {1, INT64_MAX}, versions = {0, INT64_MAX};
  if (replay) {
    const std::pair<const char*, int64_t> ranges[] = {{"steps", 1}, {"versions", 0}};
    for (const auto& [key, lowest] : ranges) {
      if (!flags->Has(key)) continue;
      int64_t first = lowest, last = INT64_MAX;
      if (!ParseRange(flags->Get(key), &first, &last) || first < lowest || first > last) {
        return UsageError(absl::StrCat("--", key, " must be A:B, A: or :B with integers ", lowest,
                                       " <= A <= B, got \"", flags->Get(key), "\""));
      }
      (std::string(key) == "steps" ? steps : versions) = {first, last};
    }
  }
  const std::vector<std::string> overrides = flags->GetAll("set");
  for (const std::string& assignment : overrides) {
    const size_t eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0) {
      return UsageError(absl::StrCat("--set takes KEY=VALUE (e.g. rollout.group_size=4), got \"",
                                     assignment, "\""));
    }
  }
  const bool dry_run = flags->Has("dry-run");
  ASSIGN_OR_RETURN(std::string path, flags->Required("config"));
  std::string replay_dir;
  if (replay) {
    ASSIGN_OR_RETURN(replay_dir, flags->Required("rollouts"));
  }
  if (*nproc > 1 && (std::getenv("RANK") != nullptr || std::getenv("WORLD_SIZE") != nullptr)) {
    return UsageError("--nproc starts the ranks itself; RANK/WORLD_SIZE are already set");
  }
  auto config = LoadRunConfig(path, overrides);
  if (!config.ok()) return config.status();
  if (*nproc > 1 && !dry_run) {
    return LaunchLocalRanks(args, *nproc, name, replay ? "replay" : "run");
  }
  TrainerRunOptions options;
  const DistributedSection& d = config->distributed;
  DistributedOptions base;
  base.rank = d.rank;
  base.world_size = d.world_size;
  base.master_addr = d.master_addr;
  base.master_port = d.master_port;
  base.backend = d.backend;
  base.timeout_s = d.timeout_s;
  auto dist = DistributedOptions::FromEnv(base);
  absl::Status valid = dist.ok() ? dist->Validate() : dist.status();
  if (!valid.ok()) return absl::InvalidArgumentError(absl::StrCat("distributed: ", valid.message()));
  options.distributed = *dist;
  ASSIGN_OR_RETURN(std::unique_ptr<WorkerLauncher> launcher, MakeProcessLauncher());
  options.launcher = launcher.get();
  options.resume = flags->Has("resume");
  options.resume_fallback = flags->Has("resume-fallback");
  options.progress = !flags->Has("no-progress") && config->logging.progress;
  options.health_check_s = *health_timeout;
  options.stop_signal = &stop_signal;
  InstallStopHandlers();
  if (replay) {
    options.replay_dir = replay_dir;
    options.replay_skip_corrupt = flags->Has("skip-corrupt");
    if (flags->Has("steps")) std::tie(options.replay_first_step, options.replay_last_step) = steps;
    if (flags->Has("versions")) {
      std::tie(options.replay_first_version, options.replay_last_version) = versions;
    }
    // The replay's own folder: never the run it reads.
    std::string output = flags->Get("output");
    if (output.empty()) {
      output = config->run.output_dir;
      while (output.size() > 1 && output.back() == '/') output.pop_back();
      output += "-replay";
    }
    config->run.output_dir = output;
  }
  if (dry_run) {
    DryRunInputs in;
    in.distributed = options.distributed;
    in.nproc = *nproc;
    in.overrides = overrides;
    in.replay_dir = replay_dir;
    in.resume = options.resume;
    ASSIGN_OR_RETURN(std::string plan, DescribeRunPlan(*config, in));
    std::cout << plan << "\nresolved config (config.resolved.yaml):\n"
              << DescribeRunConfig(*config) << "\n"
              << name << " --dry-run: nothing was written or started\n";
    return absl::OkStatus();
  }
  absl::Status status = RunTraining(*config, options);
  // Stopped by a signal after writing a checkpoint: the shell's code for that signal.
  if (absl::IsCancelled(status) && stop_signal.load() != 0) {
    return WithExitCode(std::move(status), 128 + stop_signal.load());
  }
  return status;
}

}  // namespace

int RunRunCommand(const std::vector<std::string>& args) {
  return RunSubcommand("run", kRunUsage, args,
                       [](const std::vector<std::string>& a) { return Run(a, false); });
}
int RunReplayCommand(const std::vector<std::string>& args) {
  return RunSubcommand("replay", kReplayUsage, args,
                       [](const std::vector<std::string>& a) { return Run(a, true); });
}

}  // namespace lightrl
