// The `lightrl` CLI's WorkerLauncher (rl/worker_launcher.h): runs this executable as
// `lightrl rollout-worker` and `lightrl reward-worker` with the flags those commands
// take, and the managed Python reward server (reward/python/function_server.py) with
// the Python lightrl was built with. The only place that builds those command lines.
// Torch-free and protobuf-free.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rl/worker_launcher.h"

namespace lightrl {

struct ProcessLauncherOptions {
  // The lightrl executable the workers run; empty: this process's own (/proc/self/exe).
  std::string exe;
  // The managed Python reward server's interpreter and script; empty: those of the
  // build (its LIGHTRL_PYTHON and source tree).
  std::string python;
  std::string python_reward_server;
};

// The launcher; fails when this executable cannot be found.
absl::StatusOr<std::unique_ptr<WorkerLauncher>> MakeProcessLauncher(
    const ProcessLauncherOptions& options = {});

}  // namespace lightrl
