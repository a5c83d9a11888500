// The RL run: from a RunConfig to a trained policy. Owns the loop of DESIGN.md section 2
// in one process: sample prompt groups, generate with the engine, score, compute
// advantages, log rollouts, update with the learner, checkpoint atomically, write
// metrics; plus offline replay from a rollout log and greedy evaluation. With N learner
// processes, rank 0 runs that loop and the other ranks only serve its learner calls
// (docs/distributed.md). Torch-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "rl/distributed.h"
#include "rl/run_config.h"
#include "rl/worker_launcher.h"

namespace lightrl {

struct TrainerRunOptions {
  bool resume = false;         // continue from output_dir's latest checkpoint
  // With `resume`: when the latest checkpoint fails its checksums, resume from the newest
  // earlier one that passes instead of stopping.
  bool resume_fallback = false;
  // Train from this rollout log instead of generating. The log and the run that holds it
  // are only read; the replay writes to run.output_dir, which must not be that run's.
  std::string replay_dir;
  // Replay only the records whose step (as numbered in metrics.jsonl: the first RL step
  // is 1) and policy version fall in these inclusive ranges.
  int64_t replay_first_step = 1, replay_last_step = INT64_MAX;
  int64_t replay_first_version = 0, replay_last_version = INT64_MAX;
  // Replay skips rollout-log records that fail their checksum (counted and reported)
  // instead of stopping at the first.
  bool replay_skip_corrupt = false;
  // Starts what the run needs as other processes (spawn-mode workers, managed Python
  // reward servers); the CLI gives its own (rl/tools/process_launcher.h). Null: a config
  // that needs one is refused.
  WorkerLauncher* launcher = nullptr;
  bool progress = true;        // a progress line on a terminal
  // Seconds each reward server of the config (reward.servers.NAME.address) has to answer
  // a Health call at start-up, before any model is loaded; a server that does not fails
  // the run naming its key and address. 0 skips the check.
  double health_check_s = 5;
  // Set (to the signal's number) by the caller's SIGINT/SIGTERM handler: the run writes a
  // checkpoint at the next safe point (after an SFT, RL or replay step) and returns
  // CANCELLED, resumable with `resume`. Null: the run is not interruptible.
  const std::atomic<int>* stop_signal = nullptr;
  // This process's place among the learner processes: the config's `distributed`
  // section with the launcher's environment applied (the CLI resolves it).
  DistributedOptions distributed;
};

absl::Status RunTraining(const RunConfig& config, const TrainerRunOptions& options);

}  // namespace lightrl
