// The start-up health check of the reward servers a run's config names: each must answer
// Health within a timeout, so that a wrong address fails in seconds. Owns that check only:
// it does not score, start or restart servers (a server the run serves from a Python file
// is checked where it is started). Torch-free.
#pragma once

#include "absl/status/status.h"
#include "rl/run_config.h"

namespace lightrl {

// Start-up check of each reward server the config names: a Health call must succeed
// within `timeout_s` (a server still starting is asked again until then), so that a
// wrong address fails in seconds rather than at the first step's scores. A server without
// the Health method (UNIMPLEMENTED) answered, so it is up. `timeout_s` <= 0 skips it.
absl::Status CheckRewardServers(const RunConfig& config, double timeout_s);

}  // namespace lightrl
