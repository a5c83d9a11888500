#include "rollout/rollout_worker_core.h"

#include <unistd.h>

#include <atomic>
#include <deque>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "policy/tokenizer.h"
#include "rollout/nccl_weight_group.h"

namespace lightrl {

absl::Status RolloutWorkerCoreOptions::Validate() const {
  RETURN_IF_ERROR(policy.Validate());
  RETURN_IF_ERROR(engine.Validate());
  if (max_queued_groups < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queued_groups must be >= 1, got ", max_queued_groups));
  }
  if (batch_window < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("batch_window must be >= 0");
  }
  if (max_weight_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_weight_bytes must be >= 0 (0 = half the host's memory), got ", max_weight_bytes));
  }
  return absl::OkStatus();
}

namespace {

int64_t HalfOfPhysicalMemory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return int64_t{1} << 34;
  return static_cast<int64_t>(pages) * page_size / 2;
}

// Batch windows the batcher may wait in a row while groups keep arriving.
constexpr int kMaxBatchWaits = 10;

struct Job {
  GenerationRequest request;
  int64_t min_version = 0;
  RolloutWorkerCore::DeliverFn deliver;
};

absl::Status NewerThanServed(const std::string& group, int64_t min_version, int64_t served) {
  return absl::FailedPreconditionError(
      absl::StrCat("group ", group, ": min_weight_version ", min_version,
                   " is newer than the worker's weights (version ", served, ")"));
}

absl::Status NotNewer(int64_t version, int64_t served) {
  return absl::FailedPreconditionError(absl::StrCat(
      "weight version ", version, " is not newer than the served version ", served));
}

}  // namespace

struct RolloutWorkerCore::Impl {
  RolloutWorkerCoreOptions options;
  std::optional<Tokenizer> tokenizer;
  int64_t weight_budget = 0;  // max_weight_bytes resolved

  mutable absl::Mutex mu;
  std::deque<Job> queue ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
  int64_t active_groups ABSL_GUARDED_BY(mu) = 0;
  int64_t generated_tokens ABSL_GUARDED_BY(mu) = 0;
  int64_t engine_batches ABSL_GUARDED_BY(mu) = 0;
  std::vector<PolicyModel::WeightSpec> weight_specs ABSL_GUARDED_BY(mu);
  std::atomic<int64_t> version{-1};
  std::atomic<int64_t> vocab_size{0};
  std::atomic<bool> batch_invariant{false};  // options.engine.batch_invariant, for stats
  // A multi-process instance's numerics mode, fixed when it starts: its followers' engines
  // run the mode they were started with (`--batch-invariant` on every rank).
  bool instance_invariant = false;

  // Held across an engine batch and across a weight swap, never both.
  absl::Mutex engine_mu;
  std::unique_ptr<PolicyModel> policy ABSL_GUARDED_BY(engine_mu);
  std::unique_ptr<Engine> engine ABSL_GUARDED_BY(engine_mu);
  std::string config_json ABSL_GUARDED_BY(engine_mu);

  // NCCL weight sync: one group at a time; a receive holds group_mu for its broadcast.
  absl::Mutex group_mu;
  std::unique_ptr<NcclWeightGroup> group ABSL_GUARDED_BY(group_mu);
  int64_t group_id ABSL_GUARDED_BY(group_mu) = -1;
  std::unique_ptr<DeviceStaging> staging ABSL_GUARDED_BY(group_mu);

  std::thread batcher;
  absl::Mutex shutdown_mu;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;

  void RunBatcher();
  // Runs every queued group that its min version allows as one engine batch.
  void RunBatch(std::vector<Job>& jobs);
  // Serves `model` as `model_version` with an engine in the numerics mode `invariant`.
  absl::Status InstallPolicy(std::unique_ptr<PolicyModel> model, int64_t model_version,
                             bool invariant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mu);
  // The served policy's engine in the numerics mode `invariant`: a new engine when the
  // mode changes; on an error the old one stays.
  absl::Status UseNumerics(bool invariant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mu);
  absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(PolicyModel* model, bool invariant)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mu);
  absl::StatusOr<int> DeviceIndex() const;
};

void RolloutWorkerCore::Impl::RunBatcher() {
  while (true) {
    {
      absl::MutexLock lock(&mu);
      mu.Await(absl::Condition(
          +[](Impl* self) ABSL_SHARED_LOCKS_REQUIRED(self->mu) {
            return self->stopping || !self->queue.empty();
          },
          this));
      if (stopping) return;
    }
    // Let the concurrent calls of one step join this batch: keep waiting while groups
    // still arrive, up to a bound so a steady trickle cannot hold the engine idle.
    size_t queued = 0;
    for (int waits = 0; waits < kMaxBatchWaits; ++waits) {
      absl::SleepFor(options.batch_window);
      absl::MutexLock lock(&mu);
      if (queue.size() == queued) break;
      queued = queue.size();
    }
    std::vector<Job> jobs;
    {
      absl::MutexLock lock(&mu);
      while (!queue.empty()) {
        jobs.push_back(std::move(queue.front()));
        queue.pop_front();
      }
      active_groups = static_cast<int64_t>(jobs.size());
    }
    RunBatch(jobs);
  }
}

std::vector<GenerationResult> EngineBatchFanout::Run(Engine& engine,
                                                     const std::vector<GenerationRequest>& batch) {
  return engine.Generate(batch);
}

void RolloutWorkerCore::Impl::RunBatch(std::vector<Job>& jobs) {
  int64_t tokens = 0;
  {
    absl::MutexLock engine_lock(&engine_mu);
    const int64_t current = version.load();
    std::vector<GenerationRequest> requests;
    std::vector<Job*> admitted;
    for (Job& job : jobs) {
      if (job.min_version > current) {
        job.deliver(NewerThanServed(job.request.id, job.min_version, current), current, {});
        continue;
      }
      requests.push_back(job.request);
      admitted.push_back(&job);
    }
    std::vector<GenerationResult> results;
    if (options.fanout == nullptr) {
      results = engine->Generate(requests);
    } else if (!requests.empty()) {
      if (absl::Status s = options.fanout->Announce(requests); !s.ok()) {
        for (Job* job : admitted) job->deliver(s, current, {});
      } else {
        results = options.fanout->Run(*engine, requests);
      }
    }
    for (size_t i = 0; i < results.size(); ++i) {
      for (const GeneratedSample& s : results[i].samples) tokens += static_cast<int64_t>(s.tokens.size());
      admitted[i]->deliver(results[i].status, current, std::move(results[i].samples));
    }
  }
  absl::MutexLock lock(&mu);
  active_groups = 0;
  generated_tokens += tokens;
  ++engine_batches;
}

absl::StatusOr<std::unique_ptr<Engine>> RolloutWorkerCore::Impl::MakeEngine(PolicyModel* model,
                                                                            bool invariant) {
  if (options.fanout != nullptr && invariant != instance_invariant) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a multi-process rollout instance runs the numerics it was started with "
        "(numerics.batch_invariant ", instance_invariant ? "on" : "off",
        ", `lightrl rollout-worker --batch-invariant` on every rank); the weight update asks "
        "for it ", invariant ? "on" : "off"));
  }
  EngineOptions e = options.engine;
  e.batch_invariant = invariant;
  return Engine::Create(model, e, tokenizer ? &*tokenizer : nullptr, options.parallel);
}

absl::Status RolloutWorkerCore::Impl::UseNumerics(bool invariant) {
  if (invariant == options.engine.batch_invariant) return absl::OkStatus();
  ASSIGN_OR_RETURN(engine, MakeEngine(policy.get(), invariant));
  options.engine.batch_invariant = invariant;
  batch_invariant = invariant;
  return absl::OkStatus();
}

absl::Status RolloutWorkerCore::Impl::InstallPolicy(std::unique_ptr<PolicyModel> model,
                                                    int64_t model_version, bool invariant) {
  ASSIGN_OR_RETURN(engine, MakeEngine(model.get(), invariant));
  options.engine.batch_invariant = invariant;
  batch_invariant = invariant;
  config_json = model->config().ToJson().Dump();
  vocab_size = model->config().vocab_size;
  {
    absl::MutexLock lock(&mu);
    weight_specs = model->WeightSpecs();
  }
  policy = std::move(model);
  version = model_version;
  return absl::OkStatus();
}

absl::StatusOr<int> RolloutWorkerCore::Impl::DeviceIndex() const {
  const std::string& d = options.policy.device;
  if (d == "cuda") return 0;
  int index = 0;
  if (d.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(d.substr(5), &index) && index >= 0) return index;
  return absl::FailedPreconditionError(
      absl::StrCat("NCCL weight sync needs a CUDA worker; this one runs on ", d));
}

RolloutWorkerCore::RolloutWorkerCore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RolloutWorkerCore::~RolloutWorkerCore() { Shutdown(); }

absl::StatusOr<std::unique_ptr<RolloutWorkerCore>> RolloutWorkerCore::Create(
    const RolloutWorkerCoreOptions& options, std::unique_ptr<PolicyModel> policy, int64_t version) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->batch_invariant = options.engine.batch_invariant;
  impl->instance_invariant = options.engine.batch_invariant;
  impl->weight_budget = options.max_weight_bytes > 0 ? options.max_weight_bytes : HalfOfPhysicalMemory();
  if (!options.tokenizer_path.empty()) {
    ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromFile(options.tokenizer_path));
    impl->tokenizer.emplace(std::move(t));
  }
  if (policy != nullptr) {
    if (version < 0) return absl::InvalidArgumentError("initial weight version must be >= 0");
    absl::MutexLock lock(&impl->engine_mu);
    RETURN_IF_ERROR(impl->InstallPolicy(std::move(policy), version, options.engine.batch_invariant));
  }
  Impl* raw = impl.get();
  impl->batcher = std::thread([raw] { raw->RunBatcher(); });
  return std::unique_ptr<RolloutWorkerCore>(new RolloutWorkerCore(std::move(impl)));
}

absl::Status RolloutWorkerCore::Submit(GenerationRequest request, int64_t min_weight_version,
                                       DeliverFn deliver) {
  const int64_t current = impl_->version.load();
  if (current < 0) {
    return absl::FailedPreconditionError("the worker holds no weights yet (awaiting UpdateWeights)");
  }
  if (min_weight_version > current) return NewerThanServed(request.id, min_weight_version, current);
  if (request.prompt.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("group ", request.id, ": empty prompt"));
  }
  RETURN_IF_ERROR(CheckTokenIds(request.prompt, impl_->vocab_size.load(),
                                absl::StrCat("group ", request.id, ": prompt_tokens")));
  if (absl::Status s = request.params.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("group ", request.id, ": sampling.", s.message()));
  }
  if (!request.params.stop_strings.empty() && !impl_->tokenizer) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group ", request.id, ": stop_strings need a tokenizer; start the worker with --tokenizer"));
  }
  absl::MutexLock lock(&impl_->mu);
  if (impl_->stopping) return absl::UnavailableError("the worker is shutting down");
  if (static_cast<int>(impl_->queue.size()) >= impl_->options.max_queued_groups) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the worker's queue is full (", impl_->options.max_queued_groups, " groups)"));
  }
  impl_->queue.push_back({std::move(request), min_weight_version, std::move(deliver)});
  return absl::OkStatus();
}

absl::Status RolloutWorkerCore::AcceptsWeights() const { return absl::OkStatus(); }

absl::Status RolloutWorkerCore::AcceptsBroadcast() const {
  if (impl_->options.fanout == nullptr) return absl::OkStatus();
  return absl::UnimplementedError(
      "NCCL weight broadcasts into a multi-process rollout instance (--tp > 1) are not "
      "supported yet; the controller sends its weights by the gRPC stream instead");
}

absl::Status RolloutWorkerCore::ApplyWeights(WeightSet set, bool replace_newer) {
  RETURN_IF_ERROR(AcceptsWeights());
  auto parsed = Json::Parse(set.model_config_json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight header: model_config_json: ", parsed.status().message()));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromJson(*parsed, "weight header model_config_json"));
  Impl& m = *impl_;
  absl::MutexLock engine_lock(&m.engine_mu);
  if (set.version <= m.version.load() && !replace_newer) return NotNewer(set.version, m.version.load());
  if (m.policy == nullptr) {
    ASSIGN_OR_RETURN(std::unique_ptr<PolicyModel> model,
                     PolicyModel::Create(config, /*seed=*/0, m.options.policy));
    RETURN_IF_ERROR(model->ImportWeights(set.dtype, set.tensors));
    return m.InstallPolicy(std::move(model), set.version, set.batch_invariant);
  }
  if (config.ToJson().Dump() != m.config_json) {
    return absl::InvalidArgumentError(
        "weight header: model_config_json differs from the served model's config");
  }
  RETURN_IF_ERROR(m.UseNumerics(set.batch_invariant));
  // A shard keeps its blocks; the instance's other ranks then take theirs.
  RETURN_IF_ERROR(m.policy->ImportWeights(set.dtype, set.tensors));
  if (m.options.fanout != nullptr) RETURN_IF_ERROR(m.options.fanout->AnnounceWeights(set));
  m.version = set.version;
  return absl::OkStatus();
}

absl::Status RolloutWorkerCore::JoinWeightGroup(const WeightGroupJoin& join) {
  RETURN_IF_ERROR(AcceptsBroadcast());
  ASSIGN_OR_RETURN(int device, impl_->DeviceIndex());
  if (join.rank < 1 || join.rank >= join.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("JoinWeightGroup: rank ", join.rank,
                                                   " outside [1, ", join.world_size, ")"));
  }
  Impl& m = *impl_;
  absl::MutexLock lock(&m.group_mu);
  m.group.reset();  // a new group replaces the old one
  m.group_id = -1;
  ASSIGN_OR_RETURN(m.group, NcclWeightGroup::Join(join.nccl_unique_id, join.rank, join.world_size,
                                                  device, join.timeout));
  m.group_id = join.group_id;
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RolloutWorkerCore::ReceiveBroadcast(const WeightBroadcast& request) {
  RETURN_IF_ERROR(AcceptsBroadcast());
  ASSIGN_OR_RETURN(int device, impl_->DeviceIndex());
  Impl& m = *impl_;
  absl::MutexLock lock(&m.group_mu);
  if (m.group == nullptr || m.group_id != request.group_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ReceiveWeights: not a member of weight group ", request.group_id, " (join first)"));
  }
  if (request.tensor_names.size() != request.tensor_bytes.size()) {
    return absl::InvalidArgumentError("ReceiveWeights: tensor_names and tensor_bytes differ in length");
  }
  auto parsed = Json::Parse(request.model_config_json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReceiveWeights: model_config_json: ", parsed.status().message()));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromJson(*parsed, "ReceiveWeights model_config_json"));
  // The model the weights go into: the served one, or a fresh one for a worker that has
  // none yet (installed once the weights are in).
  std::unique_ptr<PolicyModel> fresh;
  PolicyModel* target = nullptr;
  {
    absl::MutexLock engine_lock(&m.engine_mu);
    if (m.policy == nullptr) {
      ASSIGN_OR_RETURN(fresh, PolicyModel::Create(config, /*seed=*/0, m.options.policy));
      target = fresh.get();
    } else if (config.ToJson().Dump() != m.config_json) {
      return absl::InvalidArgumentError(
          "ReceiveWeights: model_config_json differs from the served model's config");
    } else {
      target = m.policy.get();
    }
  }
  ASSIGN_OR_RETURN(std::vector<PolicyModel::ParameterBuffer> params, target->ParameterBuffers());
  if (params.size() != request.tensor_names.size()) {
    return absl::InvalidArgumentError(absl::StrCat("ReceiveWeights: ", request.tensor_names.size(),
                                                   " tensors for a model of ", params.size()));
  }
  std::vector<int64_t> sizes;
  std::vector<DeviceBuffer> into;
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].name != request.tensor_names[i] || params[i].bytes != request.tensor_bytes[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ReceiveWeights: tensor ", i, " is ", request.tensor_names[i], " of ",
          request.tensor_bytes[i], " bytes; this worker has ", params[i].name, " of ",
          params[i].bytes, " bytes (same model and dtype on both sides?)"));
    }
    sizes.push_back(params[i].bytes);
    into.push_back({params[i].data, params[i].bytes});
  }
  if (m.staging == nullptr || m.staging->bytes() < DeviceStaging::Footprint(sizes)) {
    m.staging.reset();
    ASSIGN_OR_RETURN(m.staging, DeviceStaging::Allocate(DeviceStaging::Footprint(sizes), device));
  }
  std::vector<DeviceBuffer> slices = m.staging->Slices(sizes);
  if (absl::Status st = m.group->Broadcast(slices, request.timeout); !st.ok()) {
    m.group.reset();  // aborted; the controller forms a new group
    m.group_id = -1;
    return st;
  }
  absl::MutexLock engine_lock(&m.engine_mu);
  if (request.version <= m.version.load() && !request.replace_newer) {
    return NotNewer(request.version, m.version.load());
  }
  if (fresh == nullptr) RETURN_IF_ERROR(m.UseNumerics(request.batch_invariant));
  RETURN_IF_ERROR(DeviceStaging::Copy(slices, into, device));
  if (fresh != nullptr) {
    RETURN_IF_ERROR(m.InstallPolicy(std::move(fresh), request.version, request.batch_invariant));
  } else {
    m.version = request.version;
  }
  return m.version.load();
}

int64_t RolloutWorkerCore::version() const { return impl_->version.load(); }

std::vector<PolicyModel::WeightSpec> RolloutWorkerCore::weight_specs() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->weight_specs;
}

int64_t RolloutWorkerCore::weight_budget() const { return impl_->weight_budget; }

RolloutWorkerCoreStats RolloutWorkerCore::stats() const {
  absl::MutexLock lock(&impl_->mu);
  RolloutWorkerCoreStats s;
  s.weight_version = impl_->version.load();
  s.serving = s.weight_version >= 0 && !impl_->stopping;
  s.active_groups = impl_->active_groups;
  s.queued_groups = static_cast<int64_t>(impl_->queue.size());
  s.generated_tokens = impl_->generated_tokens;
  s.engine_batches = impl_->engine_batches;
  s.batch_invariant = impl_->batch_invariant.load();
  return s;
}

void RolloutWorkerCore::Shutdown() {
  {
    absl::MutexLock lock(&impl_->shutdown_mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  std::deque<Job> orphans;
  {
    absl::MutexLock lock(&impl_->mu);
    impl_->stopping = true;
    orphans.swap(impl_->queue);
  }
  for (Job& job : orphans) {
    job.deliver(absl::UnavailableError("the worker is shutting down"), -1, {});
  }
  if (impl_->batcher.joinable()) impl_->batcher.join();
}

}  // namespace lightrl
