// The Trainer class, shared by the files that implement its phases: trainer.cc (set-up,
// SFT, RL, evaluation, checkpoints, the controller), replay.cc (`lightrl replay`) and
// run_summary.cc (the start-up summary). Internal to lightrl_trainer: nothing outside these
// files includes it; the public entry point is RunTraining (rl/trainer.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json.h"
#include "common/metrics.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"
#include "policy/tokenizer.h"
#include "reward/reward_function.h"
#include "reward/reward_router.h"
#include "rl/async_rollouts.h"
#include "rl/dataset.h"
#include "rl/distributed.h"
#include "rl/learner.h"
#include "rl/learner_group.h"
#include "rl/rl_step.h"
#include "rl/rollout_instance.h"
#include "rl/rollout_log.h"
#include "rl/rollout_source.h"
#include "rl/run_config.h"
#include "rl/step_metrics.h"
#include "rl/trainer.h"
#include "rl/worker_launcher.h"

namespace lightrl {
namespace trainer_internal {

// Everything besides weights and optimizer that exact resume needs.
struct TrainerState {
  int64_t step = 0;      // RL steps done
  int64_t sft_step = 0;  // SFT steps done
  // The learner's weights version (optimizer updates done); -1 in checkpoints written
  // before it was recorded. A replay finds the checkpoint a log's records came from by it.
  int64_t policy_version = -1;
  DatasetPosition data, sft_data;

  Json ToJson() const {
    Json j = Json::MakeObject();
    j.set("step", Json(step));
    j.set("sft_step", Json(sft_step));
    j.set("data_epoch", Json(data.epoch));
    j.set("data_index", Json(data.index));
    j.set("sft_epoch", Json(sft_data.epoch));
    j.set("sft_index", Json(sft_data.index));
    j.set("policy_version", Json(policy_version));
    return j;
  }
  static absl::StatusOr<TrainerState> FromJson(const Json& j, const std::string& where) {
    TrainerState s;
    const std::pair<const char*, int64_t*> fields[] = {
        {"step", &s.step}, {"sft_step", &s.sft_step}, {"data_epoch", &s.data.epoch},
        {"data_index", &s.data.index}, {"sft_epoch", &s.sft_data.epoch}, {"sft_index", &s.sft_data.index}};
    for (const auto& [key, out] : fields) {
      const Json* v = j.find(key);
      if (v == nullptr || !v->is_int()) {
        return absl::DataLossError(absl::StrCat(where, ": missing integer \"", key, "\""));
      }
      *out = v->as_int();
    }
    if (const Json* v = j.find("policy_version"); v != nullptr && v->is_int()) s.policy_version = v->as_int();
    return s;
  }
};

struct EvalResult {
  int64_t step = -1;
  double greedy = -1;   // held-out greedy accuracy
  double sampled = -1;  // mean accuracy of run.eval_sampled samples per prompt; -1: off
};

inline std::string EvalLine(const EvalResult& e) {
  std::string line = absl::StrFormat("greedy %.3f", e.greedy);
  if (e.sampled >= 0) absl::StrAppendFormat(&line, ", sampled %.3f", e.sampled);
  return line;
}

// The name of the file marking an output folder as a replay, and of which log.
inline constexpr const char* kReplayMarkerName = "replay.json";

// `path` absolute, with symbolic links resolved where it exists, and no trailing '/'.
std::string CanonicalPath(const std::string& path);

// The run folder a rollout log belongs to: the folder holding `rollouts/`.
std::string SourceRunDir(const std::string& log_dir);

class Trainer {
 public:
  Trainer(const RunConfig& config, const TrainerRunOptions& options)
      : config_(config), options_(options) {}
  absl::Status Run();

 private:
  absl::Status RunController();
  absl::Status Setup();
  absl::Status SetUpRewards(const std::map<std::string, std::string>& remote);
  absl::Status RunLearnerRank();
  absl::StatusOr<std::unique_ptr<PolicyModel>> LoadPolicy(const std::optional<std::string>& resume_dir) const;
  // Whether the learner's model is sharded (parallel.tp, parallel.ep or parallel.expert_tp
  // > 1 on several ranks), and this rank's shard of the starting weights then.
  bool ShardedLearner() const;
  // Forms the layout's groups (tensor parallelism needs them) before the learner is made.
  absl::Status JoinLayout();
  absl::StatusOr<std::unique_ptr<PolicyModel>> LoadShard(const std::optional<std::string>& resume_dir) const;
  LearnerOptions MakeLearnerOptions() const;
  // rollout.sharded_engine under a sharded learner: every rank runs an engine rank on its
  // own shard, in the rollout instance of its TP (or EP) group.
  bool ShardedEngine() const;
  // A sharded learner whose fleet generates: rank 0 holds its shard alone and gathers
  // every update into host_weights_ for the fleet's pushes.
  bool FleetOnShards() const;
  EngineOptions MakeEngineOptions() const;
  // This rank's instance (after JoinLayout) and its engine on `policy`.
  absl::Status StartShardedEngine(PolicyModel* policy);
  // Rank 0's engine batch: with a sharded engine every rank follows (LeadFollow), each
  // copy of the instance runs its share and its leader sends rank 0 the results.
  std::vector<GenerationResult> GenerateOnEngine(const std::vector<GenerationRequest>& requests);
  absl::Status RunSft();
  absl::Status RunRl();
  // The RL step's parts: the async generator (rollout.async); one round of generated and
  // scored groups (`want` of them); the groups the step trains on, with refill rounds
  // while dynamic sampling drops groups.
  absl::StatusOr<std::unique_ptr<AsyncRollouts>> StartAsyncRollouts(const std::vector<int32_t>& stops);
  absl::StatusOr<std::vector<ScoredGroup>> GenerateScoredGroups(int64_t want, int64_t round,
                                                                const std::vector<int32_t>& stops,
                                                                AsyncRollouts* async,
                                                                RlStepMetrics* metrics);
  absl::StatusOr<std::vector<TrainGroup>> CollectTrainGroups(const std::vector<int32_t>& stops,
                                                             AsyncRollouts* async,
                                                             RlStepMetrics* metrics);
  absl::Status RunReplay();
  // Replay: refuses an output folder that holds another run or lies in the source run.
  absl::Status CheckReplayOutput() const;
  // Replay: reads the log and keeps the selected records, by step.
  absl::Status LoadReplayLog();
  // Replay: the source run's checkpoint the first selected record was generated from, or
  // none (model.path or model.init_config then).
  absl::StatusOr<std::optional<std::string>> ReplayStart() const;
  absl::Status WriteEvalSummary();
  // Held-out accuracy at `step`: greedy, and at the rollouts' sampling with
  // run.eval_sampled responses per prompt (when set). Evaluating the same step twice
  // returns the first result.
  absl::StatusOr<EvalResult> Evaluate(int64_t step);
  // Evaluate() with its progress: a line before it, with the last evaluation's time as
  // the ETA, and its own time in eval_seconds_.
  absl::StatusOr<EvalResult> EvaluateWithProgress(int64_t step);
  absl::Status Checkpoint();
  // At a safe point (a step done): when the caller asked the run to stop, writes a
  // checkpoint and returns CANCELLED saying how to continue.
  absl::Status StopIfAsked(const char* phase);
  // The lines printed once before the first step: model, layout, plan, output, how to watch.
  void PrintSummary() const;
  absl::StatusOr<std::optional<std::string>> LatestCheckpoint() const;
  std::vector<int32_t> StopTokens() const;
  // Scores a batch in one reward call per server: the router's entries (or the single
  // built-in kind) are the batch's reward sources.
  absl::StatusOr<BatchRewards> ScoreAll(const std::vector<RewardInput>& inputs);
  void Progress(const std::string& line) const;
  absl::Status WriteMetrics(int64_t step, const Scalars& scalars);

  const RunConfig& config_;
  TrainerRunOptions options_;
  std::string ckpt_root_;
  // The whole model (rank 0's engine generates with it). With a sharded learner the
  // learner trains shard_policy_ and every update is gathered into policy_; with a sharded
  // engine (ShardedEngine) policy_ is this rank's shard, trained and generated with alike,
  // and with a sharded learner's fleet (FleetOnShards) this rank's shard, trained.
  std::unique_ptr<PolicyModel> policy_;
  std::unique_ptr<PolicyModel> shard_policy_;
  // FleetOnShards: the whole model's tensors (FP32) as the last update left them.
  std::vector<PolicyModel::WeightTensor> host_weights_;
  std::optional<Tokenizer> tokenizer_;
  ProcessGroupPtr group_;  // null with one learner process
  std::unique_ptr<Learner> learner_;
  std::unique_ptr<LearnerGroup> learners_;  // every learner call goes through it
  std::unique_ptr<RolloutInstance> instance_;  // a sharded engine's ranks (before engine_)
  std::unique_ptr<Engine> engine_;
  RolloutSourcePtr rollout_source_;
  LaunchedWorkersPtr python_rewards_;      // reward.servers.NAME.python; null: none
  RewardFunctionPtr reward_;               // a single built-in kind, or
  std::unique_ptr<RewardRouter> router_;   // weighted built-ins and reward servers
  RewardMetricNames reward_metric_names_;  // reward/<source>/<component> names logged so far
  std::optional<Dataset> train_, eval_, sft_;
  std::unique_ptr<MetricsWriter> metrics_;
  // SFT's metrics: the same metrics.jsonl, TensorBoard's tensorboard/sft run; by SFT step.
  std::unique_ptr<MetricsWriter> sft_metrics_;
  std::unique_ptr<RolloutLogWriter> rollouts_;
  TrainerState state_;
  std::string last_checkpoint_;  // the name of the checkpoint this process wrote last
  bool resumed_ = false;  // continued from a checkpoint of this output folder
  // Replay: the log's records (a resumed run's second copy of a group dropped) and the
  // selected ones by step, in log order.
  std::vector<RolloutGroup> replay_log_;
  std::map<int64_t, std::vector<size_t>> replay_steps_;
  bool tty_ = false;
  EvalResult eval_before_;
  double eval_seconds_ = -1;  // how long the last evaluation took; -1: none yet
  EvalResult last_eval_;
};

}  // namespace trainer_internal
}  // namespace lightrl
