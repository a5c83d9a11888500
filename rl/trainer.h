// The RL run: from a RunConfig to a trained policy. Owns the loop of DESIGN.md section 2
// in one process: sample prompt groups, generate with the engine, score, compute
// advantages, log rollouts, update with the learner, checkpoint atomically, write
// metrics; plus offline replay from a rollout log and greedy evaluation. Torch-free.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "rl/run_config.h"

namespace lightrl {

struct TrainerRunOptions {
  bool resume = false;         // continue from output_dir's latest checkpoint
  std::string replay_dir;      // train from this rollout log instead of generating
  bool progress = true;        // a progress line on a terminal
};

absl::Status RunTraining(const RunConfig& config, const TrainerRunOptions& options);

}  // namespace lightrl
