// The Trainer's start-up summary: the lines printed once before the first step (model,
// layout, plan, output, how to watch). Owns their wording only; it reads the config and
// the set-up state and changes nothing.
#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "rl/plan.h"
#include "rl/run_progress.h"
#include "rl/trainer_internal.h"

namespace lightrl {
namespace trainer_internal {

void Trainer::PrintSummary() const {
  const bool replay = !options_.replay_dir.empty();
  const DistributedOptions& dist = options_.distributed;
  const ModelConfig& mc = policy_->config();
  const ParamCounts params = CountParameters(mc);
  std::string lines = absl::StrFormat("lightrl %s: %s\n", replay ? "replay" : "run", config_.run.name);
  absl::StrAppendFormat(&lines,
                        "  model     %s parameters (%s active per token): %d layers, hidden %d, "
                        "%d experts top-%d, vocabulary %d; %s %s\n",
                        Count(params.total()), Count(params.active()), mc.num_hidden_layers,
                        mc.hidden_size, mc.num_local_experts, mc.num_experts_per_tok, mc.vocab_size,
                        config_.run.device, config_.run.dtype);
  const int64_t world = dist.enabled() ? dist.world_size : 1;
  const int64_t ep = config_.distributed.expert_parallel;
  std::string rollouts = "the controller's engine";
  if (replay) {
    rollouts = "none (replay)";
  } else if (config_.fleet.mode == "spawn") {
    rollouts = absl::StrFormat("%d spawned rollout workers (%s)", config_.fleet.rollout_workers,
                               config_.fleet.worker_device);
  } else if (config_.fleet.mode == "cluster") {
    rollouts = absl::StrFormat("rollout workers registered with the coordinator at %s (%d at least)",
                               config_.fleet.coordinator_address, config_.fleet.min_workers);
  } else if (config_.rollout.async) {
    rollouts = "an engine copy beside the learner (rollout.async)";
  } else if (ShardedEngine()) {
    const int64_t instance = config_.parallel.tp > 1
                                 ? config_.parallel.tp
                                 : config_.parallel.ep * config_.parallel.expert_tp;
    const int64_t lockstep = config_.parallel.tp > 1 ? config_.parallel.ep / config_.parallel.tp : 1;
    rollouts = absl::StrFormat("engines on the %d ranks' shards, %d cop%s of a %d-rank instance%s "
                               "(rollout.sharded_engine)", world, world / instance,
                               world / instance == 1 ? "y" : "ies", instance,
                               lockstep > 1 ? absl::StrFormat(", attention data-parallel in "
                                                              "EP groups of %d", config_.parallel.ep)
                                            : std::string());
  }
  if (!replay && FleetOnShards()) rollouts += ", pushed from the shards gathered into host memory";
  // Sharded experts (ShardedLearner): an expert-TP size, and rank 0's whole model for its
  // engine gathered after every update (or the engine on the shards).
  const int64_t etp = config_.parallel.expert_tp;
  const std::string experts =
      ShardedLearner() ? absl::StrFormat(" x expert-TP %d, experts sharded", etp) : std::string();
  const int64_t tp = config_.parallel.tp;
  const std::string parallel =
      tp > 1 ? absl::StrFormat("tensor-parallel %d%s x data-parallel %d%s, weights sharded", tp,
                               config_.parallel.sequence_parallel ? " (sequence-parallel)" : "",
                               world / tp,
                               ep * etp > 1 ? absl::StrFormat("; experts: expert-parallel %d x "
                                                              "expert-TP %d", ep, etp)
                                            : std::string())
             : absl::StrFormat("data-parallel %d x expert-parallel %d%s",
                               world / std::max<int64_t>(ep * etp, 1), ep, experts);
  absl::StrAppendFormat(&lines, "  layout    %d learner process%s (%s); rollouts: %s\n", world,
                        world == 1 ? "" : "es", parallel, rollouts);
  if (replay) {
    absl::StrAppendFormat(&lines, "  plan      replay %d logged steps of %s", replay_steps_.size(),
                          options_.replay_dir);
  } else {
    absl::StrAppendFormat(&lines, "  plan      ");
    if (config_.sft.steps > 0) absl::StrAppendFormat(&lines, "SFT %d steps, then ", config_.sft.steps);
    absl::StrAppendFormat(&lines, "RL %d steps of %d prompts x %d samples", config_.run.steps,
                          config_.rollout.prompts_per_step, config_.rollout.group_size);
  }
  if (eval_) {
    absl::StrAppendFormat(&lines, "; eval %s%s", config_.run.eval_every > 0
                                                      ? absl::StrCat("every ", config_.run.eval_every, " steps and ")
                                                      : std::string(),
                          "at the end");
  }
  if (state_.step > 0 || state_.sft_step > 0) {
    absl::StrAppendFormat(&lines, " (from SFT step %d, RL step %d)", state_.sft_step, state_.step);
  }
  absl::StrAppendFormat(&lines, "\n  output    %s\n", config_.run.output_dir);
  if (config_.logging.tensorboard) {
    absl::StrAppendFormat(&lines, "  watch     tensorboard --logdir %s\n",
                          JoinPath(config_.run.output_dir, "tensorboard"));
  }
  if (config_.logging.jsonl) {
    absl::StrAppendFormat(&lines, "  metrics   %s (docs/metrics.md)\n",
                          JoinPath(config_.run.output_dir, "metrics.jsonl"));
  }
  std::fputs(lines.c_str(), stderr);
}
}  // namespace trainer_internal
}  // namespace lightrl
