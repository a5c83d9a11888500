#include "rl/trainer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/auth_token.h"
#include "common/checkpoint_manifest.h"
#include "common/file_util.h"
#include "common/json.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/status.h"
#include "inference_engine/engine.h"
#include "policy/checkpoint_files.h"
#include "policy/policy_model.h"
#include "policy/tokenizer.h"
#include "reward/reward_client.h"
#include "reward/reward_function.h"
#include "reward/reward_registry.h"
#include "reward/reward_router.h"
#include "rl/advantages.h"
#include "rl/async_rollouts.h"
#include "rl/dataset.h"
#include "rl/learner.h"
#include "rl/learner_group.h"
#include "rl/plan.h"
#include "rl/rollout_log.h"
#include "rl/checkpoint_dir.h"
#include "rl/reward_health.h"
#include "rl/rl_step.h"
#include "rl/rollout_source.h"
#include "rl/run_progress.h"
#include "rl/step_metrics.h"
#include "rl/stop_signal.h"
#include "rl/trainer_internal.h"

namespace lightrl {
namespace trainer_internal {
namespace {

using Clock = RunClock;

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Text of generated tokens for the reward. A policy may emit ids the tokenizer lacks
// (its vocabulary is padded beyond the tokenizer's); they carry no text.
absl::StatusOr<std::string> ResponseText(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  std::vector<int32_t> known;
  known.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < tokenizer.vocab_size()) known.push_back(id);
  }
  return tokenizer.Decode(known, /*skip_special=*/true);
}

// The SFT learning rate at `step` (0-based): sft.lr under sft's warmup and schedule.
double SftLearningRate(const SftSection& sft, int64_t step) {
  OptimizerOptions schedule;
  schedule.lr = sft.lr;
  schedule.schedule = sft.schedule;
  schedule.warmup_steps = sft.warmup_steps;
  schedule.min_lr_ratio = sft.min_lr_ratio;
  schedule.total_steps = std::max<int64_t>(1, sft.steps);
  return schedule.LearningRate(step);
}

}  // namespace

void Trainer::Progress(const std::string& line) const {
  if (!options_.progress) return;
  if (tty_) {
    std::fprintf(stderr, "\r%-110s", line.c_str());
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

absl::Status Trainer::WriteMetrics(int64_t step, const Scalars& scalars) {
  if (metrics_ == nullptr) return absl::OkStatus();
  RETURN_IF_ERROR(metrics_->Write(step, scalars));
  return metrics_->Flush();
}

absl::StatusOr<std::optional<std::string>> Trainer::LatestCheckpoint() const {
  const std::string latest = JoinPath(ckpt_root_, "latest");
  if (!FileExists(latest)) return std::optional<std::string>();
  ASSIGN_OR_RETURN(std::string name, ReadFile(latest));
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  std::string dir = JoinPath(ckpt_root_, name);
  absl::StatusOr<bool> verified = VerifyCheckpoint(dir);
  if (!verified.ok()) {
    // The newest earlier checkpoint that passes is what a fallback would resume from.
    std::string previous;
    const std::vector<std::string> names = CheckpointNames(ckpt_root_);
    for (auto it = names.rbegin(); it != names.rend() && previous.empty(); ++it) {
      if (*it < name && VerifyCheckpoint(JoinPath(ckpt_root_, *it)).ok()) previous = *it;
    }
    const std::string problem =
        absl::StrCat("the latest checkpoint ", name, " (named by ", latest, ") is unusable: ",
                     verified.status().message());
    if (previous.empty()) {
      return absl::DataLossError(
          absl::StrCat(problem, "; no earlier checkpoint in ", ckpt_root_, " passes its checks"));
    }
    if (!options_.resume_fallback) {
      return absl::DataLossError(absl::StrCat(
          problem, "; the previous checkpoint ", JoinPath(ckpt_root_, previous),
          " passes its checks: pass --resume-fallback to resume from it (the steps after it "
          "are trained again)"));
    }
    LogWarning("lightrl run: warning: %s; --resume-fallback: resuming from %s",
               problem.c_str(), previous.c_str());
    dir = JoinPath(ckpt_root_, previous);
    verified = VerifyCheckpoint(dir);
    if (!verified.ok()) return verified.status();
  }
  if (!*verified) {
    LogWarning("lightrl run: warning: %s has no %s (written before checkpoints carried "
               "checksums); resuming from it unchecked",
               dir.c_str(), std::string(kCheckpointManifestName).c_str());
  }
  return std::optional<std::string>(dir);
}

namespace {

PolicyOptions PolicyOptionsFor(const RunConfig& config, const DistributedOptions& dist) {
  PolicyOptions popts;
  popts.device = config.run.device;
  popts.dtype = config.run.dtype;
  // One GPU per learner rank.
  if (dist.enabled() && popts.device == "cuda") popts.device = absl::StrCat("cuda:", dist.local_rank);
  return popts;
}


// The parallel layout against the ranks actually started and the model, in the config's
// terms (the learner checks the same in its own).
absl::Status CheckLayout(const RunConfig& config, const DistributedOptions& dist,
                         const PolicyModel& policy) {
  if (config.parallel.expert_tp > 1 || config.parallel.tp > 1) {
    RETURN_IF_ERROR(config.parallel.CheckWorld(dist.world_size));
    RETURN_IF_ERROR(config.parallel.CheckModel(policy.config()));
  }
  const int64_t ep = config.distributed.expert_parallel;
  if (dist.world_size % ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        config.source, ": distributed.expert_parallel = ", ep,
        " must divide the number of learner ranks, ", dist.world_size,
        " (WORLD_SIZE, else distributed.world_size)"));
  }
  const int64_t experts = policy.config().num_local_experts;
  if (experts % ep != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        config.source, ": distributed.expert_parallel = ", ep,
        " must divide the model's num_local_experts, ", experts));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PolicyModel>> Trainer::LoadPolicy(
    const std::optional<std::string>& resume_dir) const {
  const PolicyOptions popts = PolicyOptionsFor(config_, options_.distributed);
  if (resume_dir) return PolicyModel::Load(*resume_dir, popts);
  if (!config_.model.path.empty()) return PolicyModel::Load(config_.model.path, popts);
  ASSIGN_OR_RETURN(ModelConfig mc, ModelConfig::FromFile(config_.model.init_config));
  return PolicyModel::Create(mc, static_cast<uint64_t>(config_.model.init_seed), popts);
}

bool Trainer::ShardedLearner() const {
  return options_.distributed.enabled() &&
         (config_.parallel.tp > 1 || config_.parallel.ep > 1 || config_.parallel.expert_tp > 1);
}

// Tensor parallelism runs over the layout's TP and DP groups, which every rank forms
// together before its learner is made (a sharded engine's instance too).
absl::Status Trainer::JoinLayout() {
  if (group_ == nullptr || (config_.parallel.tp == 1 && !ShardedEngine())) return absl::OkStatus();
  return group_->JoinLayoutGroups(config_.parallel);
}

bool Trainer::ShardedEngine() const { return ShardedLearner() && config_.rollout.sharded_engine; }

bool Trainer::FleetOnShards() const {
  return ShardedLearner() && config_.fleet.enabled() && options_.replay_dir.empty();
}

EngineOptions Trainer::MakeEngineOptions() const {
  EngineOptions eopts;
  eopts.max_num_seqs = std::max<int64_t>(config_.rollout.max_num_seqs, config_.rollout.group_size);
  eopts.kv_cache_bytes = int64_t{512} << 20;
  eopts.batch_invariant = config_.numerics.batch_invariant;
  return eopts;
}

absl::Status Trainer::StartShardedEngine(PolicyModel* policy) {
  const auto named = [](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("rollout.sharded_engine: ", s.message()));
  };
  auto instance = RolloutInstance::Create(group_.get(), /*copies=*/true);
  if (!instance.ok()) return named(instance.status());
  instance_ = std::move(*instance);
  auto engine = Engine::Create(policy, MakeEngineOptions(), &*tokenizer_, instance_->parallel());
  if (!engine.ok()) return named(engine.status());
  engine_ = std::move(*engine);
  return absl::OkStatus();
}

std::vector<GenerationResult> Trainer::GenerateOnEngine(const std::vector<GenerationRequest>& requests) {
  if (instance_ == nullptr) return engine_->Generate(requests);
  // Each copy of the instance (data-parallel copies of the shards) generates its share; the
  // other copies' leaders take theirs from the batch and send their results here.
  const int64_t copies = instance_->copies();
  absl::Status status =
      learners_->LeadFollow(copies > 1 ? RolloutInstance::EncodeBatch(requests) : std::string());
  const std::vector<GenerationRequest> mine = RolloutInstance::ShareOf(requests, 0, copies);
  if (status.ok()) status = instance_->Announce(mine);
  std::vector<GenerationResult> results(requests.size());
  if (status.ok()) {
    std::vector<GenerationResult> own = engine_->Generate(mine);
    RolloutInstance::PlaceShare(&results, std::move(own), 0, copies);
    status = instance_->Pause();
  }
  for (int64_t c = 1; c < copies && status.ok(); ++c) {
    std::string bytes;
    status = group_->RecvBytes(&bytes, instance_->LeaderOf(c));
    if (!status.ok()) break;
    auto theirs = RolloutInstance::DecodeResults(bytes);
    const size_t want = RolloutInstance::ShareSize(requests.size(), c, copies);
    if (!theirs.ok() || theirs->size() != want) {
      status = theirs.ok() ? absl::InternalError(absl::StrCat("copy ", c, " returned ",
                                                              theirs->size(), " results for ", want))
                           : theirs.status();
      break;
    }
    RolloutInstance::PlaceShare(&results, *std::move(theirs), c, copies);
  }
  if (!status.ok()) {
    // The ranks may be out of step: every group fails, and with it the run.
    results.assign(requests.size(), GenerationResult{});
    for (size_t i = 0; i < results.size(); ++i) {
      results[i].id = requests[i].id;
      results[i].status = absl::InternalError(absl::StrCat(
          "the learner ranks' sharded engine: ", status.message()));
    }
  }
  return results;
}

absl::StatusOr<std::unique_ptr<PolicyModel>> Trainer::LoadShard(
    const std::optional<std::string>& resume_dir) const {
  const DistributedOptions& dist = options_.distributed;
  RETURN_IF_ERROR(config_.parallel.CheckWorld(dist.world_size));
  ASSIGN_OR_RETURN(LayoutGroups groups, GroupsOf(config_.parallel, dist.world_size, dist.rank));
  const ShardCoords coords = ShardCoordsOf(config_.parallel, groups);
  const PolicyOptions popts = PolicyOptionsFor(config_, dist);
  // Any checkpoint (HF, or sharded under any layout) gives this rank its blocks.
  if (resume_dir) return PolicyModel::LoadShard(*resume_dir, coords, popts);
  if (!config_.model.path.empty()) return PolicyModel::LoadShard(config_.model.path, coords, popts);
  ASSIGN_OR_RETURN(ModelConfig mc, ModelConfig::FromFile(config_.model.init_config));
  return PolicyModel::CreateShard(mc, static_cast<uint64_t>(config_.model.init_seed), coords, popts);
}

LearnerOptions Trainer::MakeLearnerOptions() const {
  LearnerOptions lopts;
  lopts.loss = config_.ToLossOptions();
  // SFT-only runs may leave rollout.temperature at 0 (greedy): nothing is sampled then.
  lopts.temperature = config_.rollout.temperature > 0 ? config_.rollout.temperature : 1.0;
  lopts.minibatches = config_.algorithm.minibatches;
  // The config's sections are the learner's own option structs; only the schedule's
  // length is derived.
  lopts.optimizer = config_.optimizer;
  lopts.optimizer.total_steps = std::max<int64_t>(1, config_.run.steps * config_.algorithm.minibatches);
  lopts.data_parallel = config_.distributed;
  lopts.batch_invariant = config_.numerics.batch_invariant;
  lopts.sequence_parallel = config_.parallel.sequence_parallel;
  return lopts;
}

// A rank other than 0: the same policy and learner as rank 0, serving its learner calls.
absl::Status Trainer::RunLearnerRank() {
  const DistributedOptions& dist = options_.distributed;
  ASSIGN_OR_RETURN(group_, ProcessGroup::Create(dist, PolicyOptionsFor(config_, dist).device));
  std::string resume;  // rank 0 decides whether and where from
  RETURN_IF_ERROR(group_->BroadcastBytes(&resume, 0));
  std::optional<std::string> resume_dir;
  if (!resume.empty()) resume_dir = resume;
  // A sharded learner's rank holds only its shard; otherwise the whole model.
  ASSIGN_OR_RETURN(policy_, ShardedLearner() ? LoadShard(resume_dir) : LoadPolicy(resume_dir));
  RETURN_IF_ERROR(CheckLayout(config_, dist, *policy_));
  RETURN_IF_ERROR(JoinLayout());
  ASSIGN_OR_RETURN(learner_, Learner::Create(policy_.get(), MakeLearnerOptions(), group_.get()));
  LearnerServing serving;
  if (ShardedEngine()) {
    // This rank's engine rank, on the shard it trains, following rank 0's batches (made
    // where rank 0 makes its own: its instance's groups are collectives).
    ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromFile(config_.model.tokenizer));
    tokenizer_.emplace(std::move(t));
    RETURN_IF_ERROR(StartShardedEngine(policy_.get()));
    serving.gather_shards = false;
    serving.follow = [this](const std::string& payload) -> absl::Status {
      if (!instance_->leads()) return instance_->Follow(engine_.get(), policy_.get());
      // The leader of another copy: its share of rank 0's batch, its results to rank 0.
      ASSIGN_OR_RETURN(std::vector<GenerationRequest> batch, RolloutInstance::DecodeBatch(payload));
      const auto mine = RolloutInstance::ShareOf(batch, instance_->copy(), instance_->copies());
      RETURN_IF_ERROR(instance_->Announce(mine));
      const std::vector<GenerationResult> results = engine_->Generate(mine);
      RETURN_IF_ERROR(instance_->Pause());
      return group_->SendBytes(RolloutInstance::EncodeResults(results), 0);
    };
  }
  if (resume_dir) RETURN_IF_ERROR(learner_->LoadState(JoinPath(*resume_dir, "optimizer.pt")));
  LogInfo("lightrl run: learner rank %lld of %lld ready (%s)",
          static_cast<long long>(dist.rank), static_cast<long long>(dist.world_size),
          group_->backend().c_str());
  return ServeLearner(learner_.get(), group_.get(), policy_.get(), serving);
}

// The reward function: one built-in in this process, or the router over weighted kinds and
// reward servers. Kinds in `remote` (kind -> address: spawned reward workers) are scored
// by that server instead of in process.
absl::Status Trainer::SetUpRewards(const std::map<std::string, std::string>& remote) {
  const RewardSection& rw = config_.reward;
  reward_.reset();
  router_.reset();
  if (rw.weights.empty() && rw.servers.empty() && remote.empty()) {
    ASSIGN_OR_RETURN(reward_, MakeRewardFunction(rw.kind, rw.OptionsFor(rw.kind)));
    return absl::OkStatus();
  }
  if (python_rewards_ == nullptr) {
    ASSIGN_OR_RETURN(python_rewards_, StartManagedPythonRewards(config_, options_.launcher));
  }
  RewardRouterOptions ro;
  ro.timeout = absl::Seconds(rw.timeout_s);
  ro.max_attempts = static_cast<int>(rw.max_attempts);
  ro.max_request_bytes = rw.max_request_mb << 20;
  ro.server_wait = absl::Seconds(rw.server_wait_s);
  // Async mode scores that many groups at once; each reward server takes their calls.
  ro.max_concurrent_calls_per_entry =
      std::max<int>(ro.max_concurrent_calls_per_entry, static_cast<int>(rw.max_concurrent_groups));
  RolloutSource* source = remote.empty() ? nullptr : rollout_source_.get();
  LaunchedWorkers* python = python_rewards_.get();
  if (source != nullptr || python != nullptr) {
    ro.check_server = [source, python](const std::string& address) {
      if (python != nullptr) RETURN_IF_ERROR(python->Check(address));
      return source != nullptr ? source->CheckRewardWorker(address) : absl::OkStatus();
    };
  }
  for (const std::string& kind : BuiltinRewardKinds(rw)) {
    RewardRouterEntry e;
    e.name = kind;
    e.weight = rw.weights.empty() ? 1.0 : rw.weights.at(kind);
    if (auto it = remote.find(kind); it != remote.end()) {
      e.address = it->second;
      e.reward_kind = kind;
    } else {
      e.kind = kind;
      e.options = rw.OptionsFor(kind);
    }
    ro.entries.push_back(std::move(e));
  }
  for (const auto& [name, server] : rw.servers) {
    if (IsReservedRewardSourceName(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          config_.source, ": reward.servers.", name, ": the name is taken by the metric reward/",
          name, ", which a server's own score would be logged under; choose another name"));
    }
    RewardRouterEntry e;
    e.name = name;
    e.address = server.python.empty() ? server.address : python_rewards_->Addresses().at(name);
    e.weight = server.weight;
    e.reward_kind = server.reward_kind;
    if (!server.auth_token_file.empty()) {
      absl::StatusOr<std::string> token = ReadAuthTokenFile(server.auth_token_file);
      if (!token.ok()) {
        return absl::Status(token.status().code(),
                            absl::StrCat(config_.source, ": reward.servers.", name,
                                         ".auth_token_file: ", token.status().message()));
      }
      e.auth_token = *std::move(token);
    }
    e.tls = config_.tls.For(e.address);
    ro.entries.push_back(std::move(e));
  }
  auto router = RewardRouter::Create(ro);
  if (!router.ok()) {
    return absl::Status(router.status().code(),
                        absl::StrCat(config_.source, ": reward: ", router.status().message()));
  }
  router_ = *std::move(router);
  return absl::OkStatus();
}

absl::Status Trainer::Setup() {
  tty_ = ::isatty(2);
  const DistributedOptions& dist = options_.distributed;
  if (dist.enabled()) {
    ASSIGN_OR_RETURN(group_, ProcessGroup::Create(dist, PolicyOptionsFor(config_, dist).device));
    LogInfo("lightrl run: controller and learner rank 0 of %lld (%s, master %s:%lld)",
            static_cast<long long>(dist.world_size), group_->backend().c_str(),
            dist.master_addr.c_str(), static_cast<long long>(dist.master_port));
  }
  RETURN_IF_ERROR(CheckRewardServers(config_, options_.health_check_s));
  ckpt_root_ = JoinPath(config_.run.output_dir, "checkpoints");
  const bool replay = !options_.replay_dir.empty();
  // Checked before anything is written, so that a refused start changes no file.
  if (replay) {
    RETURN_IF_ERROR(CheckReplayOutput());
    RETURN_IF_ERROR(LoadReplayLog());
  } else if (!options_.resume && FileExists(JoinPath(ckpt_root_, "latest"))) {
    return absl::FailedPreconditionError(absl::StrCat(
        config_.run.output_dir, " already holds a run; pass --resume to continue it or choose "
        "another run.output_dir"));
  }
  // After the refusals above, which leave every file as it was: a managed Python reward
  // server (reward.servers.NAME.python) starts here and logs under run.output_dir.
  RETURN_IF_ERROR(SetUpRewards({}));
  RETURN_IF_ERROR(MakeDirs(config_.run.output_dir));
  RETURN_IF_ERROR(MakeDirs(ckpt_root_));
  RETURN_IF_ERROR(WriteFileAtomic(JoinPath(config_.run.output_dir, "config.resolved.yaml"),
                                  DescribeRunConfig(config_)));
  if (replay) {
    Json marker = Json::MakeObject();
    marker.set("rollouts", Json(CanonicalPath(options_.replay_dir)));
    RETURN_IF_ERROR(WriteFileAtomic(JoinPath(config_.run.output_dir, kReplayMarkerName),
                                    marker.Dump(2) + "\n"));
  }
  // The weights, optimizer and trainer state to start from: this folder's latest
  // checkpoint on --resume; for a replay otherwise the source run's checkpoint its log
  // starts at.
  std::optional<std::string> resume_dir;
  if (options_.resume) {
    ASSIGN_OR_RETURN(resume_dir, LatestCheckpoint());
    resumed_ = resume_dir.has_value();
    if (!resume_dir) {
      LogInfo("lightrl run: --resume: no checkpoint in %s yet, starting fresh",
              ckpt_root_.c_str());
    }
  }
  if (replay && !resume_dir) {
    ASSIGN_OR_RETURN(resume_dir, ReplayStart());
  }
  if (group_) {
    std::string resume = resume_dir.value_or("");
    RETURN_IF_ERROR(group_->BroadcastBytes(&resume, 0));
  }
  // With a sharded engine, or a sharded learner's fleet, this rank holds its shard alone;
  // otherwise the whole model.
  ASSIGN_OR_RETURN(policy_, ShardedEngine() || FleetOnShards() ? LoadShard(resume_dir)
                                                                : LoadPolicy(resume_dir));
  if (!config_.model.tokenizer.empty()) {
    ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromFile(config_.model.tokenizer));
    tokenizer_.emplace(std::move(t));
  } else {
    return absl::InvalidArgumentError("model.tokenizer: a tokenizer is required for text datasets");
  }

  RETURN_IF_ERROR(CheckLayout(config_, options_.distributed, *policy_));
  // A sharded learner trains this rank's shard; the whole model above stays for the
  // engine and is refreshed from all ranks' shards after every update (docs/distributed.md),
  // unless the engine runs on the shards (rollout.sharded_engine) or the fleet generates
  // (the shards are then gathered into host memory for its weight pushes).
  const bool whole_here = ShardedLearner() && !ShardedEngine() && !FleetOnShards();
  if (whole_here) {
    ASSIGN_OR_RETURN(shard_policy_, LoadShard(resume_dir));
  }
  PolicyModel* trained = shard_policy_ ? shard_policy_.get() : policy_.get();
  RETURN_IF_ERROR(JoinLayout());
  ASSIGN_OR_RETURN(learner_, Learner::Create(trained, MakeLearnerOptions(), group_.get()));
  learners_ = std::make_unique<LearnerGroup>(learner_.get(), group_.get(), trained,
                                             whole_here ? policy_.get() : nullptr);
  if (FleetOnShards()) learners_->GatherIntoHost(&host_weights_);

  const EngineOptions eopts = MakeEngineOptions();
  if (ShardedEngine()) {
    RETURN_IF_ERROR(StartShardedEngine(policy_.get()));
  } else if (!FleetOnShards()) {
    ASSIGN_OR_RETURN(engine_, Engine::Create(policy_.get(), eopts, &*tokenizer_));
  }

  DatasetMetadataOptions metadata;
  metadata.fields = config_.reward.metadata_fields;
  metadata.max_bytes = config_.reward.metadata_max_kb << 10;
  ASSIGN_OR_RETURN(Dataset train, Dataset::Load(config_.data.train, config_.data.prompt_key,
                                                config_.data.answer_key, /*require_answer=*/true,
                                                metadata));
  train_.emplace(std::move(train));
  if (!config_.data.eval.empty()) {
    ASSIGN_OR_RETURN(Dataset ev, Dataset::Load(config_.data.eval, config_.data.prompt_key,
                                               config_.data.answer_key, true, metadata));
    eval_.emplace(std::move(ev));
  }
  if (config_.sft.steps > 0) {
    const std::string path = config_.sft.data.empty() ? config_.data.train : config_.sft.data;
    ASSIGN_OR_RETURN(Dataset sft, Dataset::Load(path, config_.data.prompt_key, config_.data.answer_key, true));
    sft_.emplace(std::move(sft));
  }

  if (resume_dir) {
    RETURN_IF_ERROR(learner_->LoadState(JoinPath(*resume_dir, "optimizer.pt")));
    const std::string state_path = JoinPath(*resume_dir, "trainer_state.json");
    ASSIGN_OR_RETURN(std::string text, ReadFile(state_path));
    auto json = Json::Parse(text);
    if (!json.ok()) return absl::DataLossError(absl::StrCat(state_path, ": ", json.status().message()));
    ASSIGN_OR_RETURN(state_, TrainerState::FromJson(*json, state_path));
    LogInfo("%s from %s (sft step %lld, rl step %lld)",
            resumed_ ? "lightrl run: resumed" : "lightrl replay: starting",
            resume_dir->c_str(), static_cast<long long>(state_.sft_step),
            static_cast<long long>(state_.step));
  }
  if (replay && !resumed_) {
    const RolloutGroup& first = replay_log_[replay_steps_.begin()->second.front()];
    if (learner_->version() != first.policy_version) {
      const std::string from =
          resume_dir ? *resume_dir
                     : !config_.model.path.empty()
                           ? absl::StrCat("model.path ", config_.model.path)
                           : absl::StrCat("a random model (model.init_config ", config_.model.init_config, ")");
      LogWarning("lightrl replay: warning: starting from %s at policy version %lld, but the "
                 "first replayed record (step %lld) was generated by version %lld: no checkpoint "
                 "of that version in %s, so the replay does not train the weights the log was "
                 "sampled from",
                 from.c_str(), static_cast<long long>(learner_->version()),
                 static_cast<long long>(first.step + 1), static_cast<long long>(first.policy_version),
                 JoinPath(SourceRunDir(options_.replay_dir), "checkpoints").c_str());
    }
  }

  if (options_.replay_dir.empty()) {
    if (config_.fleet.enabled()) {
      FleetWeights weights;
      if (FleetOnShards()) {
        RETURN_IF_ERROR(learners_->GatherWeights());
        weights.config = &policy_->config();
        weights.host = &host_weights_;
      } else {
        weights.whole = policy_.get();
      }
      weights.save = [this](const std::string& dir, DType dtype) {
        return learners_->SaveWeights(dir, dtype);
      };
      ASSIGN_OR_RETURN(rollout_source_,
                       StartFleetRolloutSource(config_, std::move(weights), options_.launcher));
      if (!rollout_source_->RewardWorkers().empty()) {
        RETURN_IF_ERROR(SetUpRewards(rollout_source_->RewardWorkers()));
      }
    } else if (config_.rollout.async) {
      // Generation runs while the learner trains, so it cannot read the learner's tensors.
      ASSIGN_OR_RETURN(rollout_source_, MakeEngineCopyRolloutSource(policy_.get(), eopts, &*tokenizer_));
    } else {
      rollout_source_ = MakeEngineRolloutSource(
          engine_.get(), [this](const std::vector<GenerationRequest>& requests) {
            return GenerateOnEngine(requests);
          });
    }
  }

  // RL metrics by RL step (the evaluation before RL at step 0), SFT's by SFT step from 1:
  // both go to metrics.jsonl (SFT's names start with sft/); in TensorBoard SFT is a run of
  // its own (tensorboard/sft), so that neither phase's steps overlay or purge the other's.
  const std::string jsonl_path = JoinPath(config_.run.output_dir, "metrics.jsonl");
  const std::string tensorboard_dir = JoinPath(config_.run.output_dir, "tensorboard");
  if (config_.logging.jsonl && resumed_) RETURN_IF_ERROR(CutMetricsToCheckpoint(*resume_dir, jsonl_path));
  const bool sft_left = !replay && sft_ && state_.sft_step < config_.sft.steps;
  for (const bool sft : {false, true}) {
    if (sft && !sft_left) continue;
    std::vector<MetricsWriterPtr> writers;
    if (config_.logging.jsonl) {
      ASSIGN_OR_RETURN(auto w, JsonlMetricsWriter::Open(jsonl_path));
      writers.push_back(std::move(w));
    }
    if (config_.logging.tensorboard) {
      ASSIGN_OR_RETURN(auto w, TensorBoardWriter::Open(sft ? JoinPath(tensorboard_dir, "sft") : tensorboard_dir));
      // The resumed run writes the steps after the checkpoint again; TensorBoard drops the
      // killed run's copies of them on this mark. Before RL the run evaluates at step 0
      // again.
      if (resumed_) {
        RETURN_IF_ERROR(w->MarkRestart(sft ? state_.sft_step + 1 : state_.step == 0 ? 0 : state_.step + 1));
      }
      writers.push_back(std::move(w));
    }
    (sft ? sft_metrics_ : metrics_) = std::make_unique<MultiMetricsWriter>(std::move(writers));
  }
  if (options_.replay_dir.empty()) {
    ASSIGN_OR_RETURN(rollouts_, RolloutLogWriter::Open(JoinPath(config_.run.output_dir, "rollouts")));
  }
  PrintSummary();
  return absl::OkStatus();
}

std::vector<int32_t> Trainer::StopTokens() const {
  std::vector<int32_t> ids;
  for (int64_t id : config_.rollout.stop_token_ids) ids.push_back(static_cast<int32_t>(id));
  if (!ids.empty()) return ids;
  for (int64_t id : DefaultEndTokenIds(policy_->config(), &*tokenizer_)) {
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

absl::StatusOr<BatchRewards> Trainer::ScoreAll(const std::vector<RewardInput>& inputs) {
  BatchRewards out;
  if (router_) {
    ASSIGN_OR_RETURN(RoutedScores scores, router_->ScoreBatchByEntry(inputs));
    out.rewards = std::move(scores.combined);
    for (const RewardRouterEntry& entry : router_->options().entries) out.sources.push_back(entry.name);
    out.by_source = std::move(scores.by_entry);
    return out;
  }
  for (const RewardInput& in : inputs) {
    ASSIGN_OR_RETURN(RewardResult r, reward_->Score(in));
    out.rewards.push_back(std::move(r));
  }
  out.sources = {config_.reward.kind};
  out.by_source = {out.rewards};
  return out;
}

absl::Status Trainer::Checkpoint() {
  const std::string name = CheckpointName(state_.step, state_.sft_step);
  const std::string final_dir = JoinPath(ckpt_root_, name);
  const std::string tmp = final_dir + ".tmp";
  RETURN_IF_ERROR(RemoveTree(tmp));
  const DType dtype = config_.checkpoint.dtype == "bfloat16" ? DType::kBF16 : DType::kF32;
  // Whole, or under a sharded learner every rank's shard file and the index.
  RETURN_IF_ERROR(learners_->SaveWeights(tmp, dtype));
  // The tokenizer, its end tokens and the run's sampling: generate and transformers need
  // nothing else beside the checkpoint.
  GenerationConfigFile generation;
  generation.bos_token_id = policy_->config().bos_token_id;
  for (int32_t id : StopTokens()) generation.eos_token_ids.push_back(id);
  generation.max_new_tokens = config_.rollout.max_new_tokens;
  generation.temperature = config_.rollout.temperature;
  generation.top_p = config_.rollout.top_p;
  generation.top_k = config_.rollout.top_k;
  generation.stop_strings = config_.rollout.stop_strings;
  RETURN_IF_ERROR(WriteGenerationFiles(tmp, config_.model.tokenizer, *tokenizer_, generation,
                                       policy_->config().max_position_embeddings));
  RETURN_IF_ERROR(learners_->SaveState(JoinPath(tmp, "optimizer.pt")));
  state_.policy_version = learner_->version();
  RETURN_IF_ERROR(WriteFileAtomic(JoinPath(tmp, "trainer_state.json"), state_.ToJson().Dump(2) + "\n"));
  if (config_.logging.jsonl) {
    // Where metrics.jsonl ends now: a run resumed from here cuts what was logged later.
    const std::string metrics = JoinPath(config_.run.output_dir, "metrics.jsonl");
    struct stat st;
    if (::stat(metrics.c_str(), &st) != 0) {
      return absl::InternalError(absl::StrCat(metrics, ": cannot stat: ", std::strerror(errno)));
    }
    Json position = Json::MakeObject();
    position.set("metrics_jsonl_bytes", Json(static_cast<int64_t>(st.st_size)));
    RETURN_IF_ERROR(WriteFileAtomic(JoinPath(tmp, kMetricsPositionName), position.Dump(2) + "\n"));
  }
  // Last: its presence says every other file is complete, its checksums that it is intact.
  RETURN_IF_ERROR(WriteCheckpointManifest(tmp));
  if (rollouts_) RETURN_IF_ERROR(rollouts_->Sync());
  RETURN_IF_ERROR(RemoveTree(final_dir));
  if (std::rename(tmp.c_str(), final_dir.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot move ", tmp, " to ", final_dir));
  }
  RETURN_IF_ERROR(WriteFileAtomic(JoinPath(ckpt_root_, "latest"), name + "\n"));
  last_checkpoint_ = name;
  // Keep the newest `keep` checkpoints.
  const std::vector<std::string> names = CheckpointNames(ckpt_root_);
  for (size_t i = 0; i + config_.checkpoint.keep < names.size(); ++i) {
    if (names[i] != name) RETURN_IF_ERROR(RemoveTree(JoinPath(ckpt_root_, names[i])));
  }
  return absl::OkStatus();
}

absl::StatusOr<EvalResult> Trainer::Evaluate(int64_t step) {
  EvalResult result;
  if (!eval_) return result;
  if (step == last_eval_.step) return last_eval_;
  const int64_t n = config_.run.eval_samples > 0 ? std::min(config_.run.eval_samples, eval_->size())
                                                 : eval_->size();
  const int64_t sampled = config_.run.eval_sampled;
  std::vector<GenerationRequest> reqs;
  for (int64_t i = 0; i < n; ++i) {
    GenerationRequest r;
    r.id = eval_->at(i).id;
    ASSIGN_OR_RETURN(r.prompt, tokenizer_->Encode(eval_->at(i).prompt));
    r.params = config_.rollout.ToSamplingParams();
    r.params.stop_token_ids.clear();
    for (int32_t id : StopTokens()) r.params.stop_token_ids.push_back(id);
    GenerationRequest greedy = r;
    greedy.params.temperature = 0;
    greedy.params.n = 1;
    reqs.push_back(std::move(greedy));
    if (sampled > 0) {
      // The rollouts' sampling, with the same seeds at every evaluation, so that two
      // evaluations differ only by the weights.
      r.id += "/sampled";
      r.params.n = sampled;
      r.params.seed = Mix(Mix(static_cast<uint64_t>(config_.run.seed), 0xE7A1), static_cast<uint64_t>(i));
      reqs.push_back(std::move(r));
    }
  }
  auto results = GenerateOnEngine(reqs);
  // Every response is scored in one batch; inputs[k] belongs to request owner[k].
  std::vector<RewardInput> inputs;
  std::vector<size_t> owner;
  for (size_t q = 0; q < results.size(); ++q) {
    if (!results[q].status.ok()) return results[q].status;
    const Example& ex = eval_->at(static_cast<int64_t>(sampled > 0 ? q / 2 : q));
    for (const GeneratedSample& sample : results[q].samples) {
      RewardInput in;
      in.prompt = ex.prompt;
      ASSIGN_OR_RETURN(in.response, ResponseText(*tokenizer_, sample.tokens));
      in.ground_truth = ex.answer;
      in.metadata = ex.metadata;
      in.metadata["response_tokens"] = absl::StrCat(sample.tokens.size());
      inputs.push_back(std::move(in));
      owner.push_back(q);
    }
  }
  ASSIGN_OR_RETURN(BatchRewards scores, ScoreAll(inputs));
  double greedy_correct = 0, sampled_correct = 0, sampled_count = 0;
  RewardSourceMeans greedy_sources(&reward_metric_names_);
  for (size_t k = 0; k < scores.rewards.size(); ++k) {
    const bool is_sampled = sampled > 0 && owner[k] % 2 == 1;
    (is_sampled ? sampled_correct : greedy_correct) += Correctness(scores.rewards[k]);
    if (is_sampled) {
      ++sampled_count;
    } else {
      for (size_t s = 0; s < scores.sources.size(); ++s) {
        greedy_sources.Add(scores.sources[s], scores.by_source[s][k]);
      }
    }
  }
  result.step = step;
  result.greedy = n > 0 ? greedy_correct / n : 0;
  Scalars scalars = {{"eval/accuracy", result.greedy}};
  if (sampled > 0) {
    result.sampled = sampled_count > 0 ? sampled_correct / sampled_count : 0;
    scalars.push_back({"eval/accuracy_sampled", result.sampled});
  }
  for (auto& kv : greedy_sources.ToScalars("eval/reward/")) scalars.push_back(std::move(kv));
  RETURN_IF_ERROR(WriteMetrics(step, scalars));
  last_eval_ = result;
  return result;
}

absl::Status Trainer::RunSft() {
  if (!sft_ || state_.sft_step >= config_.sft.steps) return absl::OkStatus();
  const PhaseClock clock(state_.sft_step, config_.sft.steps);
  const std::vector<int32_t> stops = StopTokens();
  while (state_.sft_step < config_.sft.steps) {
    auto examples = sft_->Next(config_.sft.batch_size, static_cast<uint64_t>(config_.run.seed) + 7,
                               config_.data.shuffle, state_.sft_data);
    std::vector<TrainSample> batch;
    for (const Example* ex : examples) {
      TrainSample s;
      ASSIGN_OR_RETURN(s.prompt, tokenizer_->Encode(ex->prompt));
      ASSIGN_OR_RETURN(s.response, tokenizer_->Encode(ex->answer));
      if (!stops.empty()) s.response.push_back(stops[0]);
      batch.push_back(std::move(s));
    }
    const double lr = SftLearningRate(config_.sft, state_.sft_step);
    ASSIGN_OR_RETURN(LearnerStats st, learners_->TrainSft(batch, lr));
    ++state_.sft_step;
    if (sft_metrics_ != nullptr) {
      RETURN_IF_ERROR(sft_metrics_->Write(state_.sft_step, {{"sft/loss", st.loss},
                                                            {"sft/grad_norm", st.grad_norm},
                                                            {"sft/lr", lr}}));
      RETURN_IF_ERROR(sft_metrics_->Flush());
    }
    Progress(absl::StrFormat("[sft] step %d/%d  loss %.4f  grad %.3f  %s", state_.sft_step,
                             config_.sft.steps, st.loss, st.grad_norm, clock.Line(state_.sft_step)));
    if (config_.checkpoint.every > 0 && state_.sft_step % config_.checkpoint.every == 0) {
      RETURN_IF_ERROR(Checkpoint());
    }
    RETURN_IF_ERROR(StopIfAsked("SFT"));
  }
  if (tty_ && options_.progress) std::fprintf(stderr, "\n");
  return Checkpoint();
}

absl::StatusOr<std::unique_ptr<AsyncRollouts>> Trainer::StartAsyncRollouts(
    const std::vector<int32_t>& stops) {
  AsyncRolloutOptions ao;
  ao.prompts_per_step = config_.rollout.prompts_per_step;
  ao.max_staleness = config_.rollout.max_staleness;
  ao.versions_per_step = config_.algorithm.minibatches;
  ao.max_regenerations = config_.fleet.max_group_attempts;
  ao.seed = static_cast<uint64_t>(config_.run.seed);
  ao.shuffle = config_.data.shuffle;
  // Each group is scored as soon as it is generated, on threads beside this one, with the
  // inputs and reward calls the step's own scoring would make.
  AsyncScoreFn score;
  if (config_.reward.max_concurrent_groups > 0) {
    ao.max_concurrent_scoring = config_.reward.max_concurrent_groups;
    score = [this](const Example& ex, const GenerationRequest& request,
                   const GroupGeneration& generation) -> absl::StatusOr<GroupScores> {
      const Tokenizer& tokenizer = *tokenizer_;
      ASSIGN_OR_RETURN(
          std::vector<ScoredGroup> scored,
          ScoreGroups({&ex}, {request}, {generation},
                      [&tokenizer](const std::vector<int32_t>& tokens) {
                        return ResponseText(tokenizer, tokens);
                      },
                      [this](const std::vector<RewardInput>& inputs) { return ScoreAll(inputs); }));
      return GroupScores{std::move(scored[0].texts), std::move(scored[0].rewards),
                         std::move(scored[0].sources), std::move(scored[0].source_rewards)};
    };
  }
  RETURN_IF_ERROR(ao.Validate());
  const int64_t G = config_.rollout.group_size;
  auto make_request = [this, stops, G](const Example& ex,
                                       uint64_t seed) -> absl::StatusOr<GenerationRequest> {
    GenerationRequest r;
    r.id = ex.id;
    ASSIGN_OR_RETURN(r.prompt, tokenizer_->Encode(ex.prompt));
    r.params = config_.rollout.ToSamplingParams();
    r.params.n = G;
    r.params.seed = seed;
    r.params.stop_token_ids.assign(stops.begin(), stops.end());
    return r;
  };
  RolloutSource* source = rollout_source_.get();
  auto generate = [source](const std::vector<GenerationRequest>& reqs, int64_t min_version,
                           const GroupCallback& on_group) {
    source->GenerateEach(reqs, min_version, on_group);
  };
  return std::make_unique<AsyncRollouts>(ao, &*train_, state_.data, learner_->version(),
                                         std::move(make_request), std::move(generate),
                                         std::move(score));
}

absl::StatusOr<std::vector<ScoredGroup>> Trainer::GenerateScoredGroups(
    int64_t want, int64_t round, const std::vector<int32_t>& stops, AsyncRollouts* async,
    RlStepMetrics* metrics) {
  std::vector<const Example*> examples;
  std::vector<GenerationRequest> reqs;
  std::vector<GroupGeneration> results;
  if (async) {
    // What the run may still take after these: the later steps' groups (a refill round
    // asks again).
    const int64_t later = (config_.run.steps - state_.step - 1) * config_.rollout.prompts_per_step;
    const auto gen_start = Clock::now();
    ASSIGN_OR_RETURN(std::vector<AsyncGroup> taken, async->Take(want, learner_->version(), later));
    metrics->AddGenerateSeconds(SecondsSince(gen_start));
    std::vector<ScoredGroup> scored_ahead;  // reward.max_concurrent_groups > 0
    for (AsyncGroup& t : taken) {
      if (t.scored) {
        ScoredGroup g;
        g.example = t.example;
        g.request = std::move(t.request);
        g.generation = std::move(t.generation);
        g.texts = std::move(t.scores.texts);
        g.rewards = std::move(t.scores.rewards);
        g.sources = std::move(t.scores.sources);
        g.source_rewards = std::move(t.scores.source_rewards);
        scored_ahead.push_back(std::move(g));
        continue;
      }
      examples.push_back(t.example);
      reqs.push_back(std::move(t.request));
      results.push_back(std::move(t.generation));
    }
    state_.data = async->consumed_position();
    if (!scored_ahead.empty()) return scored_ahead;
  } else {
    examples = train_->Next(want, static_cast<uint64_t>(config_.run.seed), config_.data.shuffle,
                            state_.data);
    for (size_t i = 0; i < examples.size(); ++i) {
      GenerationRequest r;
      r.id = examples[i]->id;
      ASSIGN_OR_RETURN(r.prompt, tokenizer_->Encode(examples[i]->prompt));
      r.params = config_.rollout.ToSamplingParams();
      r.params.n = config_.rollout.group_size;
      r.params.seed = Mix(Mix(static_cast<uint64_t>(config_.run.seed), state_.step), round * 100003 + i);
      r.params.stop_token_ids.assign(stops.begin(), stops.end());
      reqs.push_back(std::move(r));
    }
    const auto gen_start = Clock::now();
    const int64_t min_version = std::max<int64_t>(0, learner_->version() - config_.rollout.max_staleness);
    results = rollout_source_->Generate(reqs, min_version);
    metrics->AddGenerateSeconds(SecondsSince(gen_start));
  }
  const Tokenizer& tokenizer = *tokenizer_;
  return ScoreGroups(
      examples, std::move(reqs), std::move(results),
      [&tokenizer](const std::vector<int32_t>& tokens) { return ResponseText(tokenizer, tokens); },
      [this](const std::vector<RewardInput>& inputs) { return ScoreAll(inputs); });
}

absl::StatusOr<std::vector<TrainGroup>> Trainer::CollectTrainGroups(
    const std::vector<int32_t>& stops, AsyncRollouts* async, RlStepMetrics* metrics) {
  TrainGroupOptions options;
  options.signal.dynamic_sampling = config_.algorithm.dynamic_sampling;
  options.signal.overlong_filter = config_.algorithm.overlong_filter;
  options.signal.overlong = config_.ToOverlongOptions();
  options.soft_overlong_penalty = config_.algorithm.overlong_soft_buffer > 0;
  const int64_t wanted = config_.rollout.prompts_per_step;
  std::vector<TrainGroup> groups;
  // Dynamic sampling drops groups without signal; refill rounds generate more.
  for (int64_t round = 0;
       static_cast<int64_t>(groups.size()) < wanted && round <= config_.algorithm.max_refill_rounds;
       ++round) {
    const int64_t want = wanted - static_cast<int64_t>(groups.size());
    ASSIGN_OR_RETURN(std::vector<ScoredGroup> scored,
                     GenerateScoredGroups(want, round, stops, async, metrics));
    for (size_t i = 0; i < scored.size(); ++i) {
      ASSIGN_OR_RETURN(std::optional<TrainGroup> group,
                       BuildTrainGroup(scored[i], state_.step, absl::StrCat("step-", state_.step, "-", round, "-", i),
                                       learner_->version(), options, metrics));
      if (group) groups.push_back(*std::move(group));
    }
    if (!config_.algorithm.dynamic_sampling) break;
  }
  return groups;
}

absl::Status Trainer::RunRl() {
  // The weights as SFT (or the resumed checkpoint) left them.
  RETURN_IF_ERROR(rollout_source_->PublishWeights(learner_->version()));
  const std::vector<int32_t> stops = StopTokens();
  // Async mode: groups are drawn and generated ahead of the step that takes them; the
  // checkpoint's dataset cursor covers only the groups taken.
  std::unique_ptr<AsyncRollouts> async;
  if (config_.rollout.async) {
    ASSIGN_OR_RETURN(async, StartAsyncRollouts(stops));
  }
  const PhaseClock clock(state_.step, config_.run.steps);
  while (state_.step < config_.run.steps) {
    const auto step_start = Clock::now();
    RlStepMetrics metrics(&reward_metric_names_);
    ASSIGN_OR_RETURN(std::vector<TrainGroup> groups, CollectTrainGroups(stops, async.get(), &metrics));
    for (const TrainGroup& g : groups) RETURN_IF_ERROR(rollouts_->Append(g.record));
    const std::vector<TrainSample> batch = BuildTrainBatch(groups);
    // Groups the next steps will take that are already generating (or done): what
    // overlaps this step's training.
    std::optional<AsyncRolloutStats> ahead;
    if (async) ahead = async->stats();
    const auto train_start = Clock::now();
    ASSIGN_OR_RETURN(LearnerStats st, learners_->TrainRl(batch));
    metrics.SetTrainSeconds(SecondsSince(train_start));
    const auto sync_start = Clock::now();
    RETURN_IF_ERROR(rollout_source_->PublishWeights(learner_->version()));
    if (async) async->Publish(learner_->version());
    metrics.SetWeightSyncSeconds(SecondsSince(sync_start));
    ++state_.step;
    std::optional<AsyncRolloutStats> after;
    if (async) after = async->stats();
    RETURN_IF_ERROR(WriteMetrics(state_.step, metrics.ToScalars(st, SecondsSince(step_start),
                                                                rollout_source_->Stats(), ahead, after)));
    Progress(absl::StrFormat("[rl %s] step %d/%d  reward %.3f  acc %.3f  len %.1f  clip %.3f  "
                             "grad %.3f  %.2f s/step  %s",
                             PolicyLossKindName(config_.algorithm.loss.kind), state_.step,
                             config_.run.steps, metrics.reward_mean(), metrics.accuracy(),
                             metrics.length_mean(), st.clip_fraction, st.grad_norm,
                             SecondsSince(step_start), clock.Line(state_.step)));
    if (config_.run.eval_every > 0 && state_.step % config_.run.eval_every == 0) {
      ASSIGN_OR_RETURN(EvalResult e, EvaluateWithProgress(state_.step));
      std::fprintf(stderr, "eval at step %lld: held-out accuracy %s (%s)\n",
                   static_cast<long long>(state_.step), EvalLine(e).c_str(),
                   Duration(eval_seconds_).c_str());
    }
    if (config_.checkpoint.every > 0 && state_.step % config_.checkpoint.every == 0) {
      RETURN_IF_ERROR(Checkpoint());
    }
    if (state_.step < config_.run.steps) RETURN_IF_ERROR(StopIfAsked("RL"));
  }
  if (tty_ && options_.progress) std::fprintf(stderr, "\n");
  return absl::OkStatus();
}

absl::Status Trainer::WriteEvalSummary() {
  if (!eval_) return absl::OkStatus();
  ASSIGN_OR_RETURN(EvalResult after, EvaluateWithProgress(state_.step));
  if (eval_before_.greedy >= 0) {
    std::fprintf(stderr, "held-out accuracy before RL: %s; after RL: %s (greedy %+.1f points)\n",
                 EvalLine(eval_before_).c_str(), EvalLine(after).c_str(),
                 100 * (after.greedy - eval_before_.greedy));
  } else {
    std::fprintf(stderr, "held-out accuracy after RL: %s\n", EvalLine(after).c_str());
  }
  auto value = [](double v) { return v >= 0 ? Json(v) : Json(); };
  Json summary = Json::MakeObject();
  summary.set("accuracy_before_rl", value(eval_before_.greedy));
  summary.set("accuracy_after_rl", value(after.greedy));
  summary.set("sampled_accuracy_before_rl", value(eval_before_.sampled));
  summary.set("sampled_accuracy_after_rl", value(after.sampled));
  return WriteFileAtomic(JoinPath(config_.run.output_dir, "eval.json"), summary.Dump(2) + "\n");
}

absl::StatusOr<EvalResult> Trainer::EvaluateWithProgress(int64_t step) {
  if (!eval_ || step == last_eval_.step) return Evaluate(step);
  const int64_t n = config_.run.eval_samples > 0 ? std::min(config_.run.eval_samples, eval_->size())
                                                 : eval_->size();
  std::string line = absl::StrFormat("[eval] step %d: %d prompts", step, n);
  if (eval_seconds_ >= 0) absl::StrAppend(&line, ", ETA ", Duration(eval_seconds_), " (the last evaluation's time)");
  Progress(line);
  const auto start = Clock::now();
  ASSIGN_OR_RETURN(EvalResult result, Evaluate(step));
  eval_seconds_ = SecondsSince(start);
  if (tty_ && options_.progress) std::fprintf(stderr, "\n");
  return result;
}

absl::Status Trainer::StopIfAsked(const char* phase) {
  const int signal = options_.stop_signal != nullptr ? options_.stop_signal->load() : 0;
  if (signal == 0) return absl::OkStatus();
  if (last_checkpoint_ != CheckpointName(state_.step, state_.sft_step)) RETURN_IF_ERROR(Checkpoint());
  if (tty_ && options_.progress) std::fprintf(stderr, "\n");
  return absl::CancelledError(absl::StrFormat(
      "stopped by %s during %s after SFT step %d, RL step %d: checkpoint %s written; run the "
      "same command with --resume to continue from it",
      SignalName(signal), phase, state_.sft_step, state_.step, JoinPath(ckpt_root_, last_checkpoint_)));
}

absl::Status Trainer::Run() {
  if (options_.distributed.enabled() && absl::StartsWith(config_.run.device, "cuda:")) {
    return absl::InvalidArgumentError(absl::StrCat(
        config_.source, ": run.device is \"", config_.run.device, "\" but there are ",
        options_.distributed.world_size, " learner ranks: use \"cuda\", and each rank takes "
        "cuda:LOCAL_RANK"));
  }
  if (options_.distributed.enabled() && options_.distributed.rank != 0) return RunLearnerRank();
  absl::Status status = RunController();
  if (absl::IsCancelled(status) && learners_ != nullptr && !learners_->in_call()) {
    // Stopped at a safe point with a checkpoint written: the other ranks end normally.
    absl::Status finished = learners_->Finish();
    if (metrics_ != nullptr) finished.Update(metrics_->Flush());
    return finished.ok() ? status : finished;
  }
  // The other ranks wait for rank 0's next learner call; tell them the run is over.
  if (!status.ok() && learners_ != nullptr && !learners_->in_call()) learners_->Abort(status);
  return status;
}

absl::Status Trainer::RunController() {
  RETURN_IF_ERROR(Setup());
  const bool replay = !options_.replay_dir.empty();
  if (!replay) RETURN_IF_ERROR(RunSft());
  if (eval_ && (replay ? !resumed_ : state_.step == 0)) {
    ASSIGN_OR_RETURN(eval_before_, EvaluateWithProgress(state_.step));
    std::fprintf(stderr, "held-out accuracy before RL: %s\n", EvalLine(eval_before_).c_str());
  }
  if (replay) {
    RETURN_IF_ERROR(RunReplay());
  } else {
    RETURN_IF_ERROR(RunRl());
    RETURN_IF_ERROR(Checkpoint());
  }
  RETURN_IF_ERROR(WriteEvalSummary());
  RETURN_IF_ERROR(learners_->Finish());
  return metrics_ ? metrics_->Flush() : absl::OkStatus();
}

}  // namespace trainer_internal

absl::Status RunTraining(const RunConfig& config, const TrainerRunOptions& options) {
  trainer_internal::Trainer trainer(config, options);
  return trainer.Run();
}

}  // namespace lightrl
