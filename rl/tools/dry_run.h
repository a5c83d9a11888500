// What `lightrl run --dry-run` and `lightrl replay --dry-run` print: the plan of a run
// from its validated, resolved config (model size, layout, steps, output folder, reward
// sources), so a config can be checked before any model is loaded. Reads config.json
// files only; writes nothing and starts nothing.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "rl/distributed.h"
#include "rl/run_config.h"

namespace lightrl {

struct DryRunInputs {
  // This process's place among the learner ranks (the config's `distributed` section
  // with the launcher's environment applied), and --nproc.
  DistributedOptions distributed;
  int64_t nproc = 1;
  // The --set assignments applied over the file, in order.
  std::vector<std::string> overrides;
  // Replay: the rollout log it reads (empty for `lightrl run`).
  std::string replay_dir;
  bool resume = false;
};

// The plan as lines of text; an error when the model's config.json cannot be read (the
// run would fail on it too).
absl::StatusOr<std::string> DescribeRunPlan(const RunConfig& config, const DryRunInputs& in);

}  // namespace lightrl
