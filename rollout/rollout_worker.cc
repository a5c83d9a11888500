#include "rollout/rollout_worker.h"

#include <unistd.h>

#include <atomic>
#include <deque>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"
#include "lightrl/v1/rollout.grpc.pb.h"
#include "policy/tokenizer.h"
#include "proto/grpc_util.h"
#include "rollout/nccl_weight_group.h"
#include "rollout/rollout_wire.h"

namespace lightrl {

absl::Status RolloutWorkerOptions::Validate() const {
  RETURN_IF_ERROR(ValidateListenAddress(listen_address, auth_token));
  RETURN_IF_ERROR(ValidateMessageLimit(max_message_bytes, 8 << 20,
                                       "max_message_bytes (weight chunks are 4 MiB)"));
  RETURN_IF_ERROR(
      ValidateInflightBudget(max_inflight_bytes, max_message_bytes, "max_inflight_bytes"));
  RETURN_IF_ERROR(policy.Validate());
  RETURN_IF_ERROR(engine.Validate());
  if (worker_id.empty()) return absl::InvalidArgumentError("worker_id must not be empty");
  if (max_queued_groups < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queued_groups must be >= 1, got ", max_queued_groups));
  }
  if (batch_window < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("batch_window must be >= 0");
  }
  if (max_weight_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_weight_bytes must be >= 0 (0 = half the host's memory), got ", max_weight_bytes));
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

using lightrl::v1::GenerateRequest;
using lightrl::v1::GenerateResponse;

// Delivers one group's outcome: an error, or the samples and the weight version that
// generated all of them.
using DeliverFn = std::function<void(absl::Status, int64_t, std::vector<GeneratedSample>)>;

struct Job {
  GenerationRequest request;
  int64_t min_version = 0;
  DeliverFn deliver;
};

// Writes one group's samples, one serialized GenerateResponse each, then finishes.
// Deleted by gRPC after Finish; Finish happens only through Deliver, so the batcher never
// holds a dead reactor. A call the client cancels, or whose deadline passes, raises the
// group's cancel flag, which the engine reads at its next step to free the group's
// sequences.
class GenerateReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  GenerateReactor() : cancelled_(std::make_shared<std::atomic<bool>>(false)) {}

  void set_group_id(std::string group_id) { group_id_ = std::move(group_id); }
  // The request's share of the in-flight budget, held until the call is done.
  void set_lease(ByteBudget::Lease lease) { lease_ = std::move(lease); }

  const std::shared_ptr<std::atomic<bool>>& cancelled() const { return cancelled_; }
  void OnCancel() override { cancelled_->store(true); }

  void Deliver(absl::Status status, int64_t version, std::vector<GeneratedSample> samples) {
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    responses_.resize(samples.size());
    for (size_t i = 0; i < samples.size(); ++i) {
      GenerateResponse response;
      response.set_group_id(group_id_);
      response.set_weight_version(version);
      ToProto(samples[i], static_cast<int>(i), response.mutable_sample());
      if (grpc::Status s = SerializeReply(response, &responses_[i]); !s.ok()) {
        Finish(s);
        return;
      }
    }
    WriteNext();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the caller went away"));
      return;
    }
    WriteNext();
  }
  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    if (next_ < responses_.size()) {
      StartWrite(&responses_[next_++]);
    } else {
      Finish(grpc::Status::OK);
    }
  }

  std::string group_id_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  std::vector<grpc::ByteBuffer> responses_;
  size_t next_ = 0;
  ByteBudget::Lease lease_;
};

}  // namespace

using RolloutHealthReactor =
    ParsedUnaryReactor<lightrl::v1::RolloutHealthRequest, lightrl::v1::RolloutHealthResponse>;
using JoinWeightGroupReactor =
    ParsedUnaryReactor<lightrl::v1::JoinWeightGroupRequest, lightrl::v1::JoinWeightGroupResponse>;
using ReceiveWeightsReactor =
    ParsedUnaryReactor<lightrl::v1::ReceiveWeightsRequest, lightrl::v1::UpdateWeightsResponse>;

// Every method raw, so that bytes that do not parse get INVALID_ARGUMENT naming the
// message type (ParseRequest) instead of gRPC's bare UNIMPLEMENTED.
using RolloutServiceBase = lightrl::v1::RolloutService::WithRawCallbackMethod_Generate<
    lightrl::v1::RolloutService::WithRawCallbackMethod_UpdateWeights<
        lightrl::v1::RolloutService::WithRawCallbackMethod_Health<
            lightrl::v1::RolloutService::WithRawCallbackMethod_JoinWeightGroup<
                lightrl::v1::RolloutService::WithRawCallbackMethod_ReceiveWeights<
                    lightrl::v1::RolloutService::Service>>>>>;

struct RolloutWorker::Impl final : public RolloutServiceBase {
  RolloutWorkerOptions options;
  std::string address;
  std::unique_ptr<grpc::Server> server;
  std::optional<Tokenizer> tokenizer;

  mutable absl::Mutex mu;
  std::deque<Job> queue ABSL_GUARDED_BY(mu);
  bool stopping ABSL_GUARDED_BY(mu) = false;
  int64_t active_groups ABSL_GUARDED_BY(mu) = 0;
  int64_t generated_tokens ABSL_GUARDED_BY(mu) = 0;
  int64_t engine_batches ABSL_GUARDED_BY(mu) = 0;
  std::atomic<int64_t> version{-1};
  std::atomic<int64_t> vocab_size{0};
  // The served model's tensors, which a weight update's header must declare.
  std::vector<PolicyModel::WeightSpec> weight_specs ABSL_GUARDED_BY(mu);
  int64_t weight_budget = 0;  // max_weight_bytes resolved
  // Request bytes of the unary and Generate calls being served (max_inflight_bytes).
  // UpdateWeights streams are not counted: each holds one chunk at a time and its tensors
  // are bounded by weight_budget, and refusing a chunk would fail a weight push.
  std::unique_ptr<ByteBudget> inflight;

  // Held across an engine batch and across a weight swap, never both.
  absl::Mutex engine_mu;
  std::unique_ptr<PolicyModel> policy ABSL_GUARDED_BY(engine_mu);
  std::unique_ptr<Engine> engine ABSL_GUARDED_BY(engine_mu);
  std::string config_json ABSL_GUARDED_BY(engine_mu);

  std::thread batcher;
  absl::Mutex shutdown_mu;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;
  absl::Notification done;

  // Generate(GenerateRequest) -> stream GenerateResponse.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  // UpdateWeights(stream WeightChunk) -> UpdateWeightsResponse.
  grpc::ServerReadReactor<grpc::ByteBuffer>* UpdateWeights(grpc::CallbackServerContext* context,
                                                           grpc::ByteBuffer* response) override;
  // Health(RolloutHealthRequest) -> RolloutHealthResponse.
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  // JoinWeightGroup(JoinWeightGroupRequest) -> JoinWeightGroupResponse.
  grpc::ServerUnaryReactor* JoinWeightGroup(grpc::CallbackServerContext* context,
                                            const grpc::ByteBuffer* request,
                                            grpc::ByteBuffer* response) override;
  // ReceiveWeights(ReceiveWeightsRequest) -> UpdateWeightsResponse.
  grpc::ServerUnaryReactor* ReceiveWeights(grpc::CallbackServerContext* context,
                                           const grpc::ByteBuffer* request,
                                           grpc::ByteBuffer* response) override;

  // NCCL weight sync: one group operation at a time, each on its own thread (they block
  // for as long as the broadcast takes); the threads are joined at shutdown.
  absl::Mutex group_mu;
  std::unique_ptr<NcclWeightGroup> group ABSL_GUARDED_BY(group_mu);
  int64_t group_id ABSL_GUARDED_BY(group_mu) = -1;
  std::unique_ptr<DeviceStaging> staging ABSL_GUARDED_BY(group_mu);
  absl::Mutex threads_mu;
  struct GroupThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::vector<GroupThread> group_threads ABSL_GUARDED_BY(threads_mu);
  absl::StatusOr<int> DeviceIndex() const;
  absl::Status JoinGroup(const lightrl::v1::JoinWeightGroupRequest& request);
  absl::StatusOr<int64_t> ReceiveBroadcast(const lightrl::v1::ReceiveWeightsRequest& request);
  template <typename Reactor, typename Fn>
  grpc::ServerUnaryReactor* RunGroupCall(grpc::CallbackServerContext* context, Reactor* reactor,
                                         Fn fn);

  absl::Status Admit(const GenerateRequest& request, Job* job);
  void RunBatcher();
  absl::Status InstallPolicy(std::unique_ptr<PolicyModel> model, int64_t model_version)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(engine_mu);
  absl::Status ApplyWeights(WeightSet set, bool replace_newer);
};

absl::Status RolloutWorker::Impl::Admit(const GenerateRequest& request, Job* job) {
  const int64_t current = version.load();
  if (current < 0) {
    return absl::FailedPreconditionError("the worker holds no weights yet (awaiting UpdateWeights)");
  }
  if (request.min_weight_version() > current) {
    return absl::FailedPreconditionError(absl::StrCat(
        "group ", request.group_id(), ": min_weight_version ", request.min_weight_version(),
        " is newer than the worker's weights (version ", current, ")"));
  }
  if (request.prompt_tokens_size() == 0) {
    return absl::InvalidArgumentError(absl::StrCat("group ", request.group_id(), ": empty prompt"));
  }
  job->request.id = request.group_id();
  job->request.prompt.assign(request.prompt_tokens().begin(), request.prompt_tokens().end());
  RETURN_IF_ERROR(CheckTokenIds(job->request.prompt, vocab_size.load(),
                                absl::StrCat("group ", request.group_id(), ": prompt_tokens")));
  job->request.params = FromProto(request.sampling());
  if (absl::Status s = job->request.params.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("group ", request.group_id(), ": sampling.",
                                                   s.message()));
  }
  if (!job->request.params.stop_strings.empty() && !tokenizer) {
    return absl::InvalidArgumentError(absl::StrCat(
        "group ", request.group_id(), ": stop_strings need a tokenizer; start the worker with "
        "--tokenizer"));
  }
  job->min_version = request.min_weight_version();
  return absl::OkStatus();
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* RolloutWorker::Impl::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes) {
  auto* reactor = new GenerateReactor();
  ByteBudget::Lease lease;
  if (grpc::Status admitted = AdmitRequest(inflight.get(), *request_bytes,
                                           GenerateRequest::default_instance().GetTypeName(),
                                           &lease);
      !admitted.ok()) {
    reactor->Finish(admitted);
    return reactor;
  }
  reactor->set_lease(std::move(lease));
  GenerateRequest request;
  if (grpc::Status parsed = ParseRequest(*request_bytes, &request); !parsed.ok()) {
    reactor->Finish(parsed);
    return reactor;
  }
  reactor->set_group_id(request.group_id());
  Job job;
  absl::Status status = CheckAuthToken(*context, options.auth_token);
  if (status.ok()) status = Admit(request, &job);
  if (status.ok()) {
    absl::MutexLock lock(&mu);
    if (stopping) {
      status = absl::UnavailableError("the worker is shutting down");
    } else if (static_cast<int>(queue.size()) >= options.max_queued_groups) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "the worker's queue is full (", options.max_queued_groups, " groups)"));
    } else {
      job.request.cancelled = reactor->cancelled();
      job.deliver = [reactor](absl::Status s, int64_t v, std::vector<GeneratedSample> samples) {
        reactor->Deliver(std::move(s), v, std::move(samples));
      };
      queue.push_back(std::move(job));
      return reactor;
    }
  }
  reactor->Deliver(status, -1, {});
  return reactor;
}

void RolloutWorker::Impl::RunBatcher() {
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
    int64_t tokens = 0;
    {
      absl::MutexLock engine_lock(&engine_mu);
      const int64_t current = version.load();
      std::vector<GenerationRequest> requests;
      std::vector<Job*> admitted;
      for (Job& job : jobs) {
        if (job.min_version > current) {
          job.deliver(absl::FailedPreconditionError(absl::StrCat(
                          "group ", job.request.id, ": min_weight_version ", job.min_version,
                          " is newer than the worker's weights (version ", current, ")")),
                      current, {});
          continue;
        }
        requests.push_back(job.request);
        admitted.push_back(&job);
      }
      std::vector<GenerationResult> results = engine->Generate(requests);
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
}

absl::Status RolloutWorker::Impl::InstallPolicy(std::unique_ptr<PolicyModel> model,
                                                int64_t model_version) {
  ASSIGN_OR_RETURN(engine, Engine::Create(model.get(), options.engine,
                                          tokenizer ? &*tokenizer : nullptr));
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

absl::Status RolloutWorker::Impl::ApplyWeights(WeightSet set, bool replace_newer) {
  auto parsed = Json::Parse(set.model_config_json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight header: model_config_json: ", parsed.status().message()));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromJson(*parsed, "weight header model_config_json"));
  absl::MutexLock engine_lock(&engine_mu);
  if (set.version <= version.load() && !replace_newer) {
    return absl::FailedPreconditionError(absl::StrCat(
        "weight version ", set.version, " is not newer than the served version ", version.load()));
  }
  if (policy == nullptr) {
    ASSIGN_OR_RETURN(std::unique_ptr<PolicyModel> model,
                     PolicyModel::Create(config, /*seed=*/0, options.policy));
    RETURN_IF_ERROR(model->ImportWeights(set.dtype, set.tensors));
    return InstallPolicy(std::move(model), set.version);
  }
  if (config.ToJson().Dump() != config_json) {
    return absl::InvalidArgumentError(
        "weight header: model_config_json differs from the served model's config");
  }
  RETURN_IF_ERROR(policy->ImportWeights(set.dtype, set.tensors));
  version = set.version;
  return absl::OkStatus();
}

namespace {

// Reads serialized WeightChunks, parsing each (a chunk that does not parse ends the call
// INVALID_ARGUMENT), and replies with a serialized UpdateWeightsResponse.
class UpdateWeightsReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UpdateWeightsReactor(RolloutWorker::Impl* impl, grpc::CallbackServerContext* context,
                       grpc::ByteBuffer* response_bytes)
      : impl_(impl), response_bytes_(response_bytes), assembler_(impl->weight_budget, Specs(impl)) {
    absl::Status auth = CheckAuthToken(*context, impl->options.auth_token);
    if (!auth.ok()) {
      Finish(ToGrpcStatus(auth));
      return;
    }
    StartRead(&chunk_bytes_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      if (grpc::Status parsed = ParseRequest(chunk_bytes_, &chunk_); !parsed.ok()) {
        Finish(parsed);
        return;
      }
      chunk_bytes_.Clear();
      absl::Status status = assembler_.Add(chunk_);
      // A stale version is refused before its tensors are streamed.
      if (status.ok() && chunk_.has_header() && !chunk_.header().replace_newer() &&
          chunk_.header().version() <= impl_->version.load()) {
        status = absl::FailedPreconditionError(
            absl::StrCat("weight version ", chunk_.header().version(),
                         " is not newer than the served version ", impl_->version.load()));
      }
      if (!status.ok()) {
        Finish(ToGrpcStatus(status));
        return;
      }
      StartRead(&chunk_bytes_);
      return;
    }
    // The client closed the stream: everything has arrived.
    absl::StatusOr<WeightSet> set = assembler_.Finish();
    absl::Status status = set.status();
    if (set.ok()) status = impl_->ApplyWeights(*std::move(set), assembler_.replace_newer());
    lightrl::v1::UpdateWeightsResponse response;
    response.set_weight_version(impl_->version.load());
    if (status.ok()) {
      LogInfo("lightrl rollout-worker %s: serving weight version %lld",
              impl_->options.worker_id.c_str(),
              static_cast<long long>(impl_->version.load()));
    }
    grpc::Status reply = ToGrpcStatus(status);
    if (reply.ok()) reply = SerializeReply(response, response_bytes_);
    Finish(reply);
  }
  void OnDone() override { delete this; }

 private:
  static std::vector<PolicyModel::WeightSpec> Specs(RolloutWorker::Impl* impl) {
    absl::MutexLock lock(&impl->mu);
    return impl->weight_specs;
  }

  RolloutWorker::Impl* impl_;
  grpc::ByteBuffer* response_bytes_;
  grpc::ByteBuffer chunk_bytes_;
  lightrl::v1::WeightChunk chunk_;
  WeightAssembler assembler_;
};

}  // namespace

grpc::ServerReadReactor<grpc::ByteBuffer>* RolloutWorker::Impl::UpdateWeights(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  return new UpdateWeightsReactor(this, context, response);
}

grpc::ServerUnaryReactor* RolloutWorker::Impl::Health(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request_bytes,
                                                      grpc::ByteBuffer* response_bytes) {
  auto* reactor = new RolloutHealthReactor(request_bytes, response_bytes, inflight.get());
  if (!reactor->parsed()) return reactor;
  lightrl::v1::RolloutHealthResponse* response = reactor->response();
  absl::Status status = CheckAuthToken(*context, options.auth_token);
  if (status.ok()) {
    absl::MutexLock lock(&mu);
    response->set_serving(version.load() >= 0 && !stopping);
    response->set_worker_id(options.worker_id);
    response->set_weight_version(version.load());
    response->set_active_groups(static_cast<int32_t>(active_groups));
    response->set_queued_groups(static_cast<int32_t>(queue.size()));
    response->set_generated_tokens(generated_tokens);
    response->set_device(options.policy.device);
    response->set_engine_batches(engine_batches);
  }
  reactor->Reply(ToGrpcStatus(status));
  return reactor;
}

absl::StatusOr<int> RolloutWorker::Impl::DeviceIndex() const {
  const std::string& d = options.policy.device;
  if (d == "cuda") return 0;
  int index = 0;
  if (d.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(d.substr(5), &index) && index >= 0) return index;
  return absl::FailedPreconditionError(
      absl::StrCat("NCCL weight sync needs a CUDA worker; this one runs on ", d));
}

absl::Status RolloutWorker::Impl::JoinGroup(const lightrl::v1::JoinWeightGroupRequest& request) {
  ASSIGN_OR_RETURN(int device, DeviceIndex());
  if (request.rank() < 1 || request.rank() >= request.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat("JoinWeightGroup: rank ", request.rank(),
                                                   " outside [1, ", request.world_size(), ")"));
  }
  const double timeout_s = request.timeout_s() > 0 ? request.timeout_s() : 120;
  absl::MutexLock lock(&group_mu);
  group.reset();  // a new group replaces the old one
  group_id = -1;
  ASSIGN_OR_RETURN(group, NcclWeightGroup::Join(request.nccl_unique_id(), request.rank(),
                                                request.world_size(), device,
                                                absl::Seconds(timeout_s)));
  group_id = request.group_id();
  return absl::OkStatus();
}

absl::StatusOr<int64_t> RolloutWorker::Impl::ReceiveBroadcast(
    const lightrl::v1::ReceiveWeightsRequest& request) {
  ASSIGN_OR_RETURN(int device, DeviceIndex());
  absl::MutexLock lock(&group_mu);
  if (group == nullptr || group_id != request.group_id()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ReceiveWeights: not a member of weight group ", request.group_id(), " (join first)"));
  }
  if (request.tensor_names_size() != request.tensor_bytes_size()) {
    return absl::InvalidArgumentError("ReceiveWeights: tensor_names and tensor_bytes differ in length");
  }
  auto parsed = Json::Parse(request.model_config_json());
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
    absl::MutexLock engine_lock(&engine_mu);
    if (policy == nullptr) {
      ASSIGN_OR_RETURN(fresh, PolicyModel::Create(config, /*seed=*/0, options.policy));
      target = fresh.get();
    } else if (config.ToJson().Dump() != config_json) {
      return absl::InvalidArgumentError(
          "ReceiveWeights: model_config_json differs from the served model's config");
    } else {
      target = policy.get();
    }
  }
  ASSIGN_OR_RETURN(std::vector<PolicyModel::ParameterBuffer> params, target->ParameterBuffers());
  if (static_cast<int>(params.size()) != request.tensor_names_size()) {
    return absl::InvalidArgumentError(absl::StrCat("ReceiveWeights: ", request.tensor_names_size(),
                                                   " tensors for a model of ", params.size()));
  }
  std::vector<int64_t> sizes;
  std::vector<DeviceBuffer> into;
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].name != request.tensor_names(i) || params[i].bytes != request.tensor_bytes(i)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ReceiveWeights: tensor ", i, " is ", request.tensor_names(i), " of ",
          request.tensor_bytes(i), " bytes; this worker has ", params[i].name, " of ",
          params[i].bytes, " bytes (same model and dtype on both sides?)"));
    }
    sizes.push_back(params[i].bytes);
    into.push_back({params[i].data, params[i].bytes});
  }
  if (staging == nullptr || staging->bytes() < DeviceStaging::Footprint(sizes)) {
    staging.reset();
    ASSIGN_OR_RETURN(staging, DeviceStaging::Allocate(DeviceStaging::Footprint(sizes), device));
  }
  std::vector<DeviceBuffer> slices = staging->Slices(sizes);
  const double timeout_s = request.timeout_s() > 0 ? request.timeout_s() : 300;
  if (absl::Status st = group->Broadcast(slices, absl::Seconds(timeout_s)); !st.ok()) {
    group.reset();  // aborted; the controller forms a new group
    group_id = -1;
    return st;
  }
  absl::MutexLock engine_lock(&engine_mu);
  if (request.version() <= version.load() && !request.replace_newer()) {
    return absl::FailedPreconditionError(absl::StrCat("weight version ", request.version(),
                                                      " is not newer than the served version ",
                                                      version.load()));
  }
  RETURN_IF_ERROR(DeviceStaging::Copy(slices, into, device));
  if (fresh != nullptr) {
    RETURN_IF_ERROR(InstallPolicy(std::move(fresh), request.version()));
  } else {
    version = request.version();
  }
  return version.load();
}

template <typename Reactor, typename Fn>
grpc::ServerUnaryReactor* RolloutWorker::Impl::RunGroupCall(grpc::CallbackServerContext* context,
                                                            Reactor* reactor, Fn fn) {
  if (!reactor->parsed()) return reactor;
  absl::Status auth = CheckAuthToken(*context, options.auth_token);
  if (!auth.ok()) {
    reactor->Reply(ToGrpcStatus(auth));
    return reactor;
  }
  absl::MutexLock lock(&threads_mu);
  // Reap the calls that have finished, then start this one.
  for (auto it = group_threads.begin(); it != group_threads.end();) {
    if (!it->finished->load()) {
      ++it;
      continue;
    }
    it->thread.join();
    it = group_threads.erase(it);
  }
  auto finished = std::make_shared<std::atomic<bool>>(false);
  group_threads.push_back({std::thread([reactor, fn, finished] {
                             reactor->Reply(ToGrpcStatus(fn()));
                             finished->store(true);
                           }),
                           finished});
  return reactor;
}

grpc::ServerUnaryReactor* RolloutWorker::Impl::JoinWeightGroup(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes,
    grpc::ByteBuffer* response_bytes) {
  auto* reactor = new JoinWeightGroupReactor(request_bytes, response_bytes, inflight.get());
  return RunGroupCall(context, reactor, [this, reactor] { return JoinGroup(reactor->request()); });
}

grpc::ServerUnaryReactor* RolloutWorker::Impl::ReceiveWeights(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes,
    grpc::ByteBuffer* response_bytes) {
  auto* reactor = new ReceiveWeightsReactor(request_bytes, response_bytes, inflight.get());
  return RunGroupCall(context, reactor, [this, reactor]() -> absl::Status {
    ASSIGN_OR_RETURN(int64_t served, ReceiveBroadcast(reactor->request()));
    reactor->response()->set_weight_version(served);
    return absl::OkStatus();
  });
}

RolloutWorker::RolloutWorker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RolloutWorker::~RolloutWorker() { Shutdown(); }

absl::StatusOr<std::unique_ptr<RolloutWorker>> RolloutWorker::Start(
    const RolloutWorkerOptions& options, std::unique_ptr<PolicyModel> policy, int64_t version) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->weight_budget = options.max_weight_bytes > 0 ? options.max_weight_bytes : HalfOfPhysicalMemory();
  impl->inflight = std::make_unique<ByteBudget>(
      InflightBudgetBytes(options.max_inflight_bytes, options.max_message_bytes),
      "rollout worker in-flight budget (max_inflight_bytes, --max-inflight-mb)");
  if (!options.tokenizer_path.empty()) {
    ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::FromFile(options.tokenizer_path));
    impl->tokenizer.emplace(std::move(t));
  }
  if (policy != nullptr) {
    if (version < 0) return absl::InvalidArgumentError("initial weight version must be >= 0");
    absl::MutexLock lock(&impl->engine_mu);
    RETURN_IF_ERROR(impl->InstallPolicy(std::move(policy), version));
  }
  int port = 0;
  ASSIGN_OR_RETURN(impl->server,
                   StartGrpcServer(options.listen_address, std::vector<grpc::Service*>{impl.get()},
                                   &port, options.max_message_bytes));
  impl->address = BoundAddress(options.listen_address, port);
  Impl* raw = impl.get();
  impl->batcher = std::thread([raw] { raw->RunBatcher(); });
  return std::unique_ptr<RolloutWorker>(new RolloutWorker(std::move(impl)));
}

const std::string& RolloutWorker::address() const { return impl_->address; }

RolloutWorkerStats RolloutWorker::stats() const {
  absl::MutexLock lock(&impl_->mu);
  RolloutWorkerStats s;
  s.weight_version = impl_->version.load();
  s.active_groups = impl_->active_groups;
  s.queued_groups = static_cast<int64_t>(impl_->queue.size());
  s.generated_tokens = impl_->generated_tokens;
  s.engine_batches = impl_->engine_batches;
  s.inflight_budget_bytes = impl_->inflight->capacity();
  s.peak_inflight_bytes = impl_->inflight->peak();
  return s;
}

void RolloutWorker::Shutdown() {
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
  {
    absl::MutexLock lock(&impl_->threads_mu);
    for (auto& t : impl_->group_threads) t.thread.join();
    impl_->group_threads.clear();
  }
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  impl_->server->Wait();
  impl_->done.Notify();
}

void RolloutWorker::Wait() { impl_->done.WaitForNotification(); }

}  // namespace lightrl
