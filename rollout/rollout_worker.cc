#include "rollout/rollout_worker.h"

#include <atomic>
#include <deque>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "lightrl/v1/rollout.grpc.pb.h"
#include "policy/tokenizer.h"
#include "proto/grpc_util.h"
#include "rollout/rollout_wire.h"

namespace lightrl {

absl::Status RolloutWorkerOptions::Validate() const {
  RETURN_IF_ERROR(ValidateListenAddress(listen_address, auth_token));
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
  return absl::OkStatus();
}

namespace {

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

// Writes one group's samples, one message each, then finishes. Deleted by gRPC after
// Finish; Finish happens only through Deliver, so the batcher never holds a dead reactor.
class GenerateReactor final : public grpc::ServerWriteReactor<GenerateResponse> {
 public:
  explicit GenerateReactor(std::string group_id) : group_id_(std::move(group_id)) {}

  void Deliver(absl::Status status, int64_t version, std::vector<GeneratedSample> samples) {
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    responses_.resize(samples.size());
    for (size_t i = 0; i < samples.size(); ++i) {
      responses_[i].set_group_id(group_id_);
      responses_[i].set_weight_version(version);
      ToProto(samples[i], static_cast<int>(i), responses_[i].mutable_sample());
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
  std::vector<GenerateResponse> responses_;
  size_t next_ = 0;
};

}  // namespace

struct RolloutWorker::Impl final : public lightrl::v1::RolloutService::CallbackService {
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

  // Held across an engine batch and across a weight swap, never both.
  absl::Mutex engine_mu;
  std::unique_ptr<PolicyModel> policy ABSL_GUARDED_BY(engine_mu);
  std::unique_ptr<Engine> engine ABSL_GUARDED_BY(engine_mu);
  std::string config_json ABSL_GUARDED_BY(engine_mu);

  std::thread batcher;
  absl::Mutex shutdown_mu;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;
  absl::Notification done;

  grpc::ServerWriteReactor<GenerateResponse>* Generate(grpc::CallbackServerContext* context,
                                                       const GenerateRequest* request) override;
  grpc::ServerReadReactor<lightrl::v1::WeightChunk>* UpdateWeights(
      grpc::CallbackServerContext* context,
      lightrl::v1::UpdateWeightsResponse* response) override;
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* context,
                                   const lightrl::v1::RolloutHealthRequest* request,
                                   lightrl::v1::RolloutHealthResponse* response) override;

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

grpc::ServerWriteReactor<GenerateResponse>* RolloutWorker::Impl::Generate(
    grpc::CallbackServerContext* context, const GenerateRequest* request) {
  auto* reactor = new GenerateReactor(request->group_id());
  Job job;
  absl::Status status = CheckAuthToken(*context, options.auth_token);
  if (status.ok()) status = Admit(*request, &job);
  if (status.ok()) {
    absl::MutexLock lock(&mu);
    if (stopping) {
      status = absl::UnavailableError("the worker is shutting down");
    } else if (static_cast<int>(queue.size()) >= options.max_queued_groups) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "the worker's queue is full (", options.max_queued_groups, " groups)"));
    } else {
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

class UpdateWeightsReactor final : public grpc::ServerReadReactor<lightrl::v1::WeightChunk> {
 public:
  UpdateWeightsReactor(RolloutWorker::Impl* impl, grpc::CallbackServerContext* context,
                       lightrl::v1::UpdateWeightsResponse* response)
      : impl_(impl), response_(response), assembler_(impl->options.max_weight_bytes) {
    absl::Status auth = CheckAuthToken(*context, impl->options.auth_token);
    if (!auth.ok()) {
      Finish(ToGrpcStatus(auth));
      return;
    }
    StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
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
      StartRead(&chunk_);
      return;
    }
    // The client closed the stream: everything has arrived.
    absl::StatusOr<WeightSet> set = assembler_.Finish();
    absl::Status status = set.status();
    if (set.ok()) status = impl_->ApplyWeights(*std::move(set), assembler_.replace_newer());
    response_->set_weight_version(impl_->version.load());
    if (status.ok()) {
      std::fprintf(stderr, "lightrl rollout-worker %s: serving weight version %lld\n",
                   impl_->options.worker_id.c_str(),
                   static_cast<long long>(impl_->version.load()));
    }
    Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }

 private:
  RolloutWorker::Impl* impl_;
  lightrl::v1::UpdateWeightsResponse* response_;
  lightrl::v1::WeightChunk chunk_;
  WeightAssembler assembler_;
};

}  // namespace

grpc::ServerReadReactor<lightrl::v1::WeightChunk>* RolloutWorker::Impl::UpdateWeights(
    grpc::CallbackServerContext* context, lightrl::v1::UpdateWeightsResponse* response) {
  return new UpdateWeightsReactor(this, context, response);
}

grpc::ServerUnaryReactor* RolloutWorker::Impl::Health(
    grpc::CallbackServerContext* context, const lightrl::v1::RolloutHealthRequest*,
    lightrl::v1::RolloutHealthResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
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
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

RolloutWorker::RolloutWorker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RolloutWorker::~RolloutWorker() { Shutdown(); }

absl::StatusOr<std::unique_ptr<RolloutWorker>> RolloutWorker::Start(
    const RolloutWorkerOptions& options, std::unique_ptr<PolicyModel> policy, int64_t version) {
  RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>();
  impl->options = options;
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
  ASSIGN_OR_RETURN(impl->server, StartGrpcServer(options.listen_address,
                                                 std::vector<grpc::Service*>{impl.get()}, &port));
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
  impl_->server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  impl_->server->Wait();
  impl_->done.Notify();
}

void RolloutWorker::Wait() { impl_->done.WaitForNotification(); }

}  // namespace lightrl
