// `lightrl reward-worker`: serves a built-in reward over lightrl.v1.RewardService until
// SIGINT/SIGTERM. gRPC side only: this file must never include torch headers (the
// `lightrl` executable links torch, but no translation unit sees both).
#include <signal.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "reward/reward_function.h"
#include "reward/reward_service.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

constexpr const char* kRewardWorkerUsage =
    "usage: lightrl reward-worker [--listen HOST:PORT] [--kind KIND] [--auth-token T]\n"
    "  --listen      address to serve on (default 127.0.0.1:0; port 0 picks a free port,\n"
    "                printed as \"listening on HOST:PORT\")\n"
    "  --kind        built-in reward: math, arithmetic, countdown, code (default math)\n"
    "  --auth-token  shared token clients send as `authorization: Bearer T`; required for\n"
    "                any non-loopback address\n";

absl::Status Run(const std::vector<std::string>& args) {
  absl::StatusOr<Flags> flags = Flags::Parse(args, {"listen", "kind", "auth-token"});
  if (!flags.ok()) return flags.status();
  RewardServerOptions options;
  options.listen_address = flags->Get("listen", options.listen_address);
  options.auth_token = flags->Get("auth-token");
  absl::StatusOr<RewardFunctionPtr> function =
      MakeBuiltinRewardFunction(flags->Get("kind", "math"));
  if (!function.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--kind: ", function.status().message()));
  }

  // Block the stop signals before gRPC starts its threads so they inherit the mask and
  // only sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, *std::move(function));
  if (!server.ok()) return server.status();
  std::cout << "listening on " << (*server)->address() << std::endl;

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::cerr << "lightrl reward-worker: signal " << signal_number << ", shutting down\n";
  (*server)->Shutdown();
  return absl::OkStatus();
}

}  // namespace

int RunRewardWorkerCommand(const std::vector<std::string>& args) {
  return RunSubcommand("reward-worker", kRewardWorkerUsage, args, Run);
}

}  // namespace lightrl
