#include "rl/tools/dry_run.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/config_table.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/status.h"
#include "policy/model_config.h"

namespace lightrl {
namespace {

// 1234567 -> "1.23M".
std::string Count(int64_t n) {
  const double v = static_cast<double>(n);
  if (v >= 1e9) return absl::StrFormat("%.2fB", v / 1e9);
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fK", v / 1e3);
  return absl::StrCat(n);
}

std::string Weight(double w) { return absl::StrFormat("%g", w); }

absl::StatusOr<std::string> ModelLine(const RunConfig& config) {
  const bool from_checkpoint = !config.model.path.empty();
  const std::string json = from_checkpoint ? JoinPath(config.model.path, "config.json")
                                           : config.model.init_config;
  ASSIGN_OR_RETURN(ModelConfig model, ModelConfig::FromFile(json));
  int64_t lightning = 0;
  for (int64_t l = 0; l < model.num_hidden_layers; ++l) lightning += model.is_lightning(l);
  std::string line = absl::StrCat(
      "model:   ", Count(model.num_parameters()), " parameters, ", model.num_hidden_layers,
      " layers (", lightning, " lightning, ", model.num_hidden_layers - lightning,
      " softmax), hidden ", model.hidden_size, ", ", model.num_local_experts, " experts (top ",
      model.num_experts_per_tok, "), vocab ", model.vocab_size, "; ", config.run.dtype, " on ",
      config.run.device, "\n         ");
  if (from_checkpoint) {
    absl::StrAppend(&line, "from ", config.model.path);
  } else {
    absl::StrAppend(&line, "randomly initialised from ", config.model.init_config, " (seed ",
                    config.model.init_seed, ")");
  }
  absl::StrAppend(&line, config.model.tokenizer.empty()
                             ? "; no tokenizer"
                             : absl::StrCat("; tokenizer ", config.model.tokenizer), "\n");
  return line;
}

std::string LayoutLine(const RunConfig& config, const DryRunInputs& in) {
  const int64_t world = in.nproc > 1 ? in.nproc : in.distributed.world_size;
  std::string line = absl::StrCat("layout:  ", world, " learner rank", world == 1 ? "" : "s");
  if (in.nproc > 1) {
    absl::StrAppend(&line, " started here by --nproc");
  } else if (world > 1) {
    absl::StrAppend(&line, " (this is rank ", in.distributed.rank, ", master ",
                    in.distributed.master_addr, ":", in.distributed.master_port, ")");
  }
  if (world > 1) absl::StrAppend(&line, ", backend ", in.distributed.backend);
  if (!in.replay_dir.empty()) {
    absl::StrAppend(&line, "; no generation (replays ", in.replay_dir, ")\n");
  } else if (!config.fleet.enabled()) {
    absl::StrAppend(&line, "; rollouts on the controller's own engine",
                    config.rollout.async ? ", generated ahead while the learner trains" : "",
                    "\n");
  } else {
    absl::StrAppend(&line, "; rollouts on a ", config.fleet.mode, " fleet of ",
                    config.fleet.mode == "spawn" ? absl::StrCat(config.fleet.rollout_workers, " ")
                                                 : std::string(),
                    "workers (at least ", config.fleet.min_workers, ", weights by ",
                    config.fleet.weight_sync, " in ", config.fleet.weight_dtype, ")\n");
  }
  return line;
}

std::string StepsLine(const RunConfig& config, const DryRunInputs& in) {
  std::string line = "steps:   ";
  if (config.sft.steps > 0) {
    absl::StrAppend(&line, "SFT warm-up ", config.sft.steps, " steps of ", config.sft.batch_size,
                    " examples (lr ", Weight(config.sft.lr), "), then ");
  }
  const int64_t samples = config.rollout.prompts_per_step * config.rollout.group_size;
  absl::StrAppend(&line, in.replay_dir.empty() ? "RL " : "replay of up to ", config.run.steps,
                  " steps x ", config.rollout.prompts_per_step, " prompts x ",
                  config.rollout.group_size, " samples = ", samples, " responses a step (",
                  Count(samples * config.run.steps), " in all), ", config.algorithm.minibatches,
                  " update", config.algorithm.minibatches == 1 ? "" : "s",
                  " a step, lr ", Weight(config.optimizer.lr), ", up to ",
                  config.rollout.max_new_tokens, " new tokens a response\n         ");
  absl::StrAppend(&line, config.run.eval_every > 0
                             ? absl::StrCat("eval every ", config.run.eval_every, " steps on ",
                                            config.data.eval)
                             : std::string("no periodic eval"),
                  "; ",
                  config.checkpoint.every > 0
                      ? absl::StrCat("checkpoint every ", config.checkpoint.every,
                                     " steps, keeping ", config.checkpoint.keep)
                      : std::string("checkpoint at the end"),
                  "\n");
  absl::StrAppend(&line, "data:    ", config.data.train, " (\"", config.data.prompt_key,
                  "\" -> prompt", config.data.answer_key.empty() ? "" : ", \"",
                  config.data.answer_key, config.data.answer_key.empty() ? "" : "\" -> answer",
                  ")\n");
  return line;
}

std::string OutputLine(const RunConfig& config, const DryRunInputs& in) {
  const std::string& dir = config.run.output_dir;
  std::string state;
  if (!FileExists(dir)) {
    state = "new; created at the start";
  } else if (FileExists(JoinPath(dir, "checkpoints/latest"))) {
    state = in.resume ? "exists; --resume continues from checkpoints/latest"
                      : "exists and holds checkpoints";
  } else {
    state = "exists";
  }
  return absl::StrCat("output:  ", dir, " (", state, "): checkpoints/, metrics.jsonl",
                      config.logging.tensorboard ? ", TensorBoard events" : "",
                      in.replay_dir.empty() ? ", rollouts/" : "", ", config.resolved.yaml\n");
}

std::string RewardLines(const RunConfig& config) {
  std::vector<std::string> sources;
  const RewardSection& r = config.reward;
  for (const std::string& kind : BuiltinRewardKinds(r)) {
    auto w = r.weights.find(kind);
    sources.push_back(absl::StrCat("built-in ", kind, " (weight ",
                                   Weight(w == r.weights.end() ? 1.0 : w->second), ")"));
  }
  for (const auto& [name, server] : r.servers) {
    // As the resolved config writes the server: a managed Python function has no address.
    const Json row = DumpTable(RewardServerSection::Table(), server);
    const Json* python = row.find("python");
    const Json* function = row.find("function");
    std::string where = absl::StrCat("server at ", server.address);
    if (python != nullptr && python->is_string() && !python->as_string().empty()) {
      where = absl::StrCat("Python ", python->as_string(),
                           function != nullptr && function->is_string()
                               ? absl::StrCat(":", function->as_string())
                               : std::string(),
                           " served on loopback");
    }
    sources.push_back(absl::StrCat(name, ": ", where, " (weight ", Weight(server.weight), ")"));
  }
  std::string lines = "rewards: ";
  absl::StrAppend(&lines, absl::StrJoin(sources, "\n         "), "\n");
  if (config.fleet.spawn_reward_workers) {
    absl::StrAppend(&lines, "         built-in kinds scored by spawned reward workers\n");
  }
  return lines;
}

}  // namespace

absl::StatusOr<std::string> DescribeRunPlan(const RunConfig& config, const DryRunInputs& in) {
  std::string out = absl::StrCat("config:  ", config.source, " is valid");
  if (!in.overrides.empty()) {
    absl::StrAppend(&out, ", with --set ", absl::StrJoin(in.overrides, ", --set "));
  }
  absl::StrAppend(&out, "\n");
  ASSIGN_OR_RETURN(std::string model, ModelLine(config));
  absl::StrAppend(&out, model, LayoutLine(config, in), StepsLine(config, in),
                  OutputLine(config, in), RewardLines(config));
  return out;
}

}  // namespace lightrl
