#include "rollout/rollout_worker.h"

#include <atomic>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "lightrl/v1/rollout.grpc.pb.h"
#include "proto/grpc_util.h"
#include "rollout/rollout_wire.h"

namespace lightrl {

absl::Status RolloutWorkerOptions::Validate() const {
  RETURN_IF_ERROR(ValidateListenAddress(listen_address, auth_token));
  RETURN_IF_ERROR(tls.Validate("rollout worker tls"));
  RETURN_IF_ERROR(ValidateMessageLimit(max_message_bytes, 8 << 20,
                                       "max_message_bytes (weight chunks are 4 MiB)"));
  RETURN_IF_ERROR(
      ValidateInflightBudget(max_inflight_bytes, max_message_bytes, "max_inflight_bytes"));
  if (worker_id.empty()) return absl::InvalidArgumentError("worker_id must not be empty");
  return RolloutWorkerCoreOptions::Validate();
}

namespace {

using lightrl::v1::GenerateRequest;
using lightrl::v1::GenerateResponse;

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
  std::unique_ptr<RolloutWorkerCore> core;
  std::string address;
  std::unique_ptr<grpc::Server> server;
  // Request bytes of the unary and Generate calls being served (max_inflight_bytes).
  // UpdateWeights streams are not counted: each holds one chunk at a time and its tensors
  // are bounded by the core's weight budget, and refusing a chunk would fail a weight push.
  std::unique_ptr<ByteBudget> inflight;

  absl::Mutex shutdown_mu;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;
  absl::Notification done;

  // The NCCL calls block for as long as the broadcast takes, so each runs on a thread of
  // its own, off gRPC's callback threads; the threads are joined at shutdown.
  absl::Mutex threads_mu;
  struct GroupThread {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::vector<GroupThread> group_threads ABSL_GUARDED_BY(threads_mu);

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

  template <typename Reactor, typename Fn>
  grpc::ServerUnaryReactor* RunGroupCall(grpc::CallbackServerContext* context, Reactor* reactor,
                                         Fn fn);
};

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
  absl::Status status = CheckAuthToken(*context, options.auth_token);
  if (status.ok()) {
    GenerationRequest group;
    group.id = request.group_id();
    group.prompt.assign(request.prompt_tokens().begin(), request.prompt_tokens().end());
    group.params = FromProto(request.sampling());
    group.cancelled = reactor->cancelled();
    status = core->Submit(std::move(group), request.min_weight_version(),
                          [reactor](absl::Status s, int64_t v, std::vector<GeneratedSample> samples) {
                            reactor->Deliver(std::move(s), v, std::move(samples));
                          });
    if (status.ok()) return reactor;
  }
  reactor->Deliver(status, -1, {});
  return reactor;
}

namespace {

// Reads serialized WeightChunks, parsing each (a chunk that does not parse ends the call
// INVALID_ARGUMENT), and replies with a serialized UpdateWeightsResponse.
class UpdateWeightsReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UpdateWeightsReactor(RolloutWorker::Impl* impl, grpc::CallbackServerContext* context,
                       grpc::ByteBuffer* response_bytes)
      : impl_(impl), response_bytes_(response_bytes), assembler_(impl->core->weight_budget(), impl->core->weight_specs()) {
    absl::Status auth = CheckAuthToken(*context, impl->options.auth_token);
    if (!auth.ok()) {
      Finish(ToGrpcStatus(auth));
      return;
    }
    // Refused before any tensor is streamed.
    if (absl::Status accepts = impl->core->AcceptsWeights(); !accepts.ok()) {
      Finish(ToGrpcStatus(accepts));
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
          chunk_.header().version() <= impl_->core->version()) {
        status = absl::FailedPreconditionError(
            absl::StrCat("weight version ", chunk_.header().version(),
                         " is not newer than the served version ", impl_->core->version()));
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
    if (set.ok()) status = impl_->core->ApplyWeights(*std::move(set), assembler_.replace_newer());
    lightrl::v1::UpdateWeightsResponse response;
    response.set_weight_version(impl_->core->version());
    if (status.ok()) {
      LogInfo("lightrl rollout-worker %s: serving weight version %lld",
              impl_->options.worker_id.c_str(),
              static_cast<long long>(impl_->core->version()));
    }
    grpc::Status reply = ToGrpcStatus(status);
    if (reply.ok()) reply = SerializeReply(response, response_bytes_);
    Finish(reply);
  }
  void OnDone() override { delete this; }

 private:
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
    const RolloutWorkerCoreStats s = core->stats();
    response->set_serving(s.serving);
    response->set_worker_id(options.worker_id);
    response->set_weight_version(s.weight_version);
    response->set_active_groups(static_cast<int32_t>(s.active_groups));
    response->set_queued_groups(static_cast<int32_t>(s.queued_groups));
    response->set_generated_tokens(s.generated_tokens);
    response->set_device(options.policy.device);
    response->set_engine_batches(s.engine_batches);
    response->set_batch_invariant(s.batch_invariant);
  }
  reactor->Reply(ToGrpcStatus(status));
  return reactor;
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
  return RunGroupCall(context, reactor, [this, reactor] {
    const lightrl::v1::JoinWeightGroupRequest& request = reactor->request();
    WeightGroupJoin join;
    join.group_id = request.group_id();
    join.nccl_unique_id = request.nccl_unique_id();
    join.rank = request.rank();
    join.world_size = request.world_size();
    join.timeout = absl::Seconds(request.timeout_s() > 0 ? request.timeout_s() : 120);
    return core->JoinWeightGroup(join);
  });
}

grpc::ServerUnaryReactor* RolloutWorker::Impl::ReceiveWeights(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request_bytes,
    grpc::ByteBuffer* response_bytes) {
  auto* reactor = new ReceiveWeightsReactor(request_bytes, response_bytes, inflight.get());
  return RunGroupCall(context, reactor, [this, reactor]() -> absl::Status {
    const lightrl::v1::ReceiveWeightsRequest& request = reactor->request();
    WeightBroadcast broadcast;
    broadcast.group_id = request.group_id();
    broadcast.version = request.version();
    broadcast.replace_newer = request.replace_newer();
    broadcast.model_config_json = request.model_config_json();
    broadcast.tensor_names.assign(request.tensor_names().begin(), request.tensor_names().end());
    broadcast.tensor_bytes.assign(request.tensor_bytes().begin(), request.tensor_bytes().end());
    broadcast.timeout = absl::Seconds(request.timeout_s() > 0 ? request.timeout_s() : 300);
    broadcast.batch_invariant = request.batch_invariant();
    ASSIGN_OR_RETURN(int64_t served, core->ReceiveBroadcast(broadcast));
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
  impl->inflight = std::make_unique<ByteBudget>(
      InflightBudgetBytes(options.max_inflight_bytes, options.max_message_bytes),
      "rollout worker in-flight budget (max_inflight_bytes, --max-inflight-mb)");
  ASSIGN_OR_RETURN(impl->core, RolloutWorkerCore::Create(options, std::move(policy), version));
  int port = 0;
  ASSIGN_OR_RETURN(impl->server,
                   StartGrpcServer(options.listen_address, std::vector<grpc::Service*>{impl.get()},
                                   &port, options.max_message_bytes, options.tls,
                                   "rollout worker tls"));
  impl->address = BoundAddress(options.listen_address, port);
  return std::unique_ptr<RolloutWorker>(new RolloutWorker(std::move(impl)));
}

const std::string& RolloutWorker::address() const { return impl_->address; }

RolloutWorkerStats RolloutWorker::stats() const {
  const RolloutWorkerCoreStats core = impl_->core->stats();
  RolloutWorkerStats s;
  s.weight_version = core.weight_version;
  s.active_groups = core.active_groups;
  s.queued_groups = core.queued_groups;
  s.generated_tokens = core.generated_tokens;
  s.engine_batches = core.engine_batches;
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
  impl_->core->Shutdown();
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
