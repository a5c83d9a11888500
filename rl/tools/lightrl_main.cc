// The `lightrl` executable: dispatches to one subcommand per role or tool.
#include <iostream>
#include <string>
#include <vector>

#include "rl/genrm_reward.h"
#include "rl/tools/commands.h"

namespace {

constexpr const char* kUsage =
    "usage: lightrl <command> [flags]   (lightrl <command> --help for its flags)\n"
    "commands:\n"
    "  run        an RL run from a YAML config (SFT warm-up, CISPO/GRPO/DAPO loop)\n"
    "  replay     train from a stored rollout log without generating\n"
    "  generate   sample completions for prompts with the inference engine\n"
    "  logprobs   per-token log-probabilities of sequences under a checkpoint\n"
    "  tokenize   encode and decode text with a tokenizer.json\n"
    "  init       write a randomly initialised model for a config.json\n"
    "  convert    re-save a checkpoint (dtype, transformers naming, sharding)\n"
    "  rollouts   show or export the rollout log (show, export)\n"
    "  reward-worker  serve a built-in reward over gRPC (lightrl.v1.RewardService)\n"
    "  rollout-worker serve the inference engine over gRPC (lightrl.v1.RolloutService)\n"
    "  plan       parallel layout, memory per GPU and step time of a config on N GPUs\n"
    "  plot       PNG line charts of runs' metrics.jsonl, one per metric, runs overlaid\n"
    "every command takes --help/-h and --log-level debug|info|warning|error\n"
    "  (default: the LIGHTRL_LOG_LEVEL environment variable, else info)\n"
    "exit codes (docs/cli.md):\n"
    "  0  success, or --help\n"
    "  1  runtime failure: bad config, I/O error, training or serving error\n"
    "  2  usage error: unknown command or flag, missing or invalid flag value\n"
    "  run/replay --nproc N exit with the first failing rank's code (128 + signal if killed)\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  if (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return 0;
  }
  const std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  // The reward kinds above reward/ join the registry before any command reads it.
  lightrl::RegisterGenrmRewardKind();
  if (command == "run") return lightrl::RunRunCommand(args);
  if (command == "replay") return lightrl::RunReplayCommand(args);
  if (command == "generate") return lightrl::RunGenerateCommand(args);
  if (command == "logprobs") return lightrl::RunLogprobsCommand(args);
  if (command == "tokenize") return lightrl::RunTokenizeCommand(args);
  if (command == "init") return lightrl::RunInitCommand(args);
  if (command == "convert") return lightrl::RunConvertCommand(args);
  if (command == "rollouts") return lightrl::RunRolloutsCommand(args);
  if (command == "reward-worker") return lightrl::RunRewardWorkerCommand(args);
  if (command == "rollout-worker") return lightrl::RunRolloutWorkerCommand(args);
  if (command == "plan") return lightrl::RunPlanCommand(args);
  if (command == "plot") return lightrl::RunPlotCommand(args);
  std::cerr << "lightrl: unknown command \"" << command << "\"\n" << kUsage;
  return 2;
}
