// `lightrl run --config X.yaml [--resume]` and `lightrl replay --config X.yaml --rollouts DIR`.
#include <iostream>

#include "common/status.h"
#include "rl/run_config.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"
#include "rl/trainer.h"

namespace lightrl {
namespace {

constexpr const char* kRunUsage =
    "usage: lightrl run --config X.yaml [--resume] [--no-progress]\n"
    "Validates the whole config, then runs SFT warm-up (if configured) and the RL loop,\n"
    "writing checkpoints, metrics (JSONL + TensorBoard) and the rollout log under\n"
    "run.output_dir. --resume continues exactly from the latest checkpoint there.\n";

constexpr const char* kReplayUsage =
    "usage: lightrl replay --config X.yaml --rollouts DIR [--resume]\n"
    "Trains on the groups of a rollout log, step by step, without generating.\n";

int Run(const std::vector<std::string>& args, bool replay) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << (replay ? kReplayUsage : kRunUsage);
      return 0;
    }
  }
  const char* name = replay ? "lightrl replay" : "lightrl run";
  auto flags = replay ? Flags::Parse(args, {"config", "rollouts"}, {"resume", "no-progress"})
                      : Flags::Parse(args, {"config"}, {"resume", "no-progress"});
  if (!flags.ok()) {
    std::cerr << name << ": " << flags.status().message() << "\n";
    return 2;
  }
  auto path = flags->Required("config");
  if (!path.ok()) {
    std::cerr << name << ": " << path.status().message() << "\n";
    return 2;
  }
  auto config = LoadRunConfig(*path);
  if (!config.ok()) {
    std::cerr << name << ": " << config.status().message() << "\n";
    return 1;
  }
  TrainerRunOptions options;
  options.resume = flags->Has("resume");
  options.progress = !flags->Has("no-progress") && config->logging.progress;
  if (replay) {
    auto dir = flags->Required("rollouts");
    if (!dir.ok()) {
      std::cerr << name << ": " << dir.status().message() << "\n";
      return 2;
    }
    options.replay_dir = *dir;
  }
  absl::Status status = RunTraining(*config, options);
  if (!status.ok()) {
    std::cerr << name << ": " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int RunRunCommand(const std::vector<std::string>& args) { return Run(args, false); }
int RunReplayCommand(const std::vector<std::string>& args) { return Run(args, true); }

}  // namespace lightrl
