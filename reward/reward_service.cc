#include "reward/reward_service.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "reward/sandbox.h"

namespace lightrl {
namespace {

using ScoreReactor = ParsedUnaryReactor<lightrl::v1::ScoreRequest, lightrl::v1::ScoreResponse>;
using HealthReactor = ParsedUnaryReactor<lightrl::v1::HealthRequest, lightrl::v1::HealthResponse>;

int DefaultParallelism() {
  return std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
}

}  // namespace

absl::Status RewardServerOptions::Validate() const {
  if (max_parallel_items < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_parallel_items must be >= 0 (0 = one per core), got ", max_parallel_items));
  }
  if (num_scoring_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_scoring_threads must be >= 0 (0 = one per core), got ", num_scoring_threads));
  }
  if (absl::Status status = ValidateMessageLimit(max_request_bytes, kMinScoreRequestBytes,
                                                 "max_request_bytes");
      !status.ok()) {
    return status;
  }
  if (absl::Status status =
          ValidateInflightBudget(max_inflight_bytes, max_request_bytes, "max_inflight_bytes");
      !status.ok()) {
    return status;
  }
  if (absl::Status status = tls.Validate("reward server tls"); !status.ok()) return status;
  return ValidateListenAddress(listen_address, auth_token);
}

RewardServiceImpl::RewardServiceImpl(RewardFunctionPtr function,
                                     const RewardServerOptions& options)
    : function_(std::move(function)),
      auth_token_(options.auth_token),
      max_parallel_items_(options.max_parallel_items > 0 ? options.max_parallel_items
                                                         : DefaultParallelism()),
      inflight_(InflightBudgetBytes(options.max_inflight_bytes, options.max_request_bytes),
                "reward server in-flight budget (max_inflight_bytes, --max-inflight-mb)") {
  const int num_scoring_threads =
      options.num_scoring_threads > 0 ? options.num_scoring_threads : DefaultParallelism();
  for (int i = 0; i < num_scoring_threads; ++i) {
    threads_.emplace_back([this] { RunScoringThread(); });
  }
}

RewardServiceImpl::~RewardServiceImpl() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& thread : threads_) thread.join();
}

void RewardServiceImpl::RunScoringThread() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](RewardServiceImpl* self) { return self->stopping_ || !self->queue_.empty(); },
          this));
      // Drain before stopping: every queued call must still be finished.
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

absl::Status RewardServiceImpl::CheckAuth(const grpc::CallbackServerContext& context) const {
  return CheckAuthToken(context, auth_token_);
}

absl::Status RewardServiceImpl::ScoreBatch(const lightrl::v1::ScoreRequest& request,
                                           lightrl::v1::ScoreResponse* response,
                                           const std::atomic<bool>& cancelled) {
  const int num_items = request.items_size();
  if (num_items == 0) return absl::InvalidArgumentError("Score: the batch has no items");
  if (num_items > kMaxScoreBatchItems) {
    return absl::InvalidArgumentError(absl::StrCat("Score: the batch has ", num_items,
                                                   " items, more than the limit of ",
                                                   kMaxScoreBatchItems));
  }
  if (!request.reward_kind().empty() && request.reward_kind() != function_->Kind()) {
    return absl::InvalidArgumentError(absl::StrCat("Score: reward_kind \"", request.reward_kind(),
                                                   "\" requested, this server scores \"",
                                                   function_->Kind(), "\""));
  }
  std::unordered_set<std::string> ids;
  for (int i = 0; i < num_items; ++i) {
    if (!ids.insert(request.items(i).id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("Score: item ", i, " repeats id \"", request.items(i).id(), "\""));
    }
  }
  // Items are taken in order by up to max_parallel_items_ threads; each thread's
  // sandboxed runs watch the call's cancellation flag.
  std::vector<absl::StatusOr<RewardResult>> results(num_items,
                                                    absl::CancelledError("Score: not scored"));
  std::atomic<int> next{0};
  // The call fails at its first failing item, so no item after one is taken.
  std::atomic<bool> failed{false};
  auto score_items = [&] {
    SandboxCancelScope cancel_scope(&cancelled);
    for (int i = next++; i < num_items && !cancelled.load() && !failed.load(); i = next++) {
      const lightrl::v1::ScoreItem& item = request.items(i);
      RewardInput input;
      input.prompt = item.prompt();
      input.response = item.response();
      input.ground_truth = item.ground_truth();
      input.metadata.insert(item.metadata().begin(), item.metadata().end());
      results[i] = function_->Score(input);
      if (!results[i].ok()) failed = true;
    }
  };
  const int num_threads = std::min(num_items, max_parallel_items_);
  std::vector<std::thread> helpers;
  for (int t = 1; t < num_threads; ++t) helpers.emplace_back(score_items);
  score_items();
  for (std::thread& helper : helpers) helper.join();
  if (cancelled.load()) {
    return absl::CancelledError("Score: the client cancelled or its deadline passed; runs killed");
  }

  response->mutable_results()->Reserve(num_items);
  for (int i = 0; i < num_items; ++i) {
    const lightrl::v1::ScoreItem& item = request.items(i);
    const absl::StatusOr<RewardResult>& result = results[i];
    if (!result.ok()) {
      return absl::Status(result.status().code(),
                          absl::StrCat("Score: item ", i, " (id \"", item.id(), "\"): ",
                                       result.status().message()));
    }
    if (!std::isfinite(result->score)) {
      return absl::InternalError(absl::StrCat("Score: reward \"", function_->Kind(),
                                              "\" produced a non-finite score (", result->score,
                                              ") for item ", i, " (id \"", item.id(), "\")"));
    }
    lightrl::v1::ScoreResult* out = response->add_results();
    out->set_id(item.id());
    out->set_score(result->score);
    if (!result->note.empty()) out->set_text(result->note);
    for (const auto& [name, value] : result->components) {
      if (!std::isfinite(value)) {
        return absl::InternalError(absl::StrCat("Score: reward \"", function_->Kind(),
                                                "\" produced a non-finite component \"", name,
                                                "\" (", value, ") for item ", i, " (id \"",
                                                item.id(), "\")"));
      }
      (*out->mutable_components())[name] = value;
    }
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* RewardServiceImpl::Score(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request_bytes,
                                                   grpc::ByteBuffer* response_bytes) {
  auto* reactor = new ScoreReactor(request_bytes, response_bytes, &inflight_);
  if (!reactor->parsed()) return reactor;
  const absl::Status auth = CheckAuth(*context);
  if (!auth.ok()) {
    reactor->Reply(ToGrpcStatus(auth));
    return reactor;
  }
  std::shared_ptr<std::atomic<bool>> cancelled = reactor->cancelled();
  absl::MutexLock lock(&mu_);
  queue_.push_back([this, context, reactor, cancelled] {
    if (cancelled->load() || context->IsCancelled()) {
      reactor->Reply(grpc::Status(grpc::StatusCode::CANCELLED, "call ended before scoring"));
      return;
    }
    // A failed batch returns no partial results: Reply sends a response only on OK.
    const absl::Status status = ScoreBatch(reactor->request(), reactor->response(), *cancelled);
    reactor->Reply(ToGrpcStatus(status));
  });
  return reactor;
}

grpc::ServerUnaryReactor* RewardServiceImpl::Health(grpc::CallbackServerContext* context,
                                                    const grpc::ByteBuffer* request_bytes,
                                                    grpc::ByteBuffer* response_bytes) {
  auto* reactor = new HealthReactor(request_bytes, response_bytes, &inflight_);
  if (!reactor->parsed()) return reactor;
  const absl::Status status = CheckAuth(*context);
  if (status.ok()) {
    reactor->response()->set_serving(true);
    reactor->response()->set_reward_kind(function_->Kind());
  }
  reactor->Reply(ToGrpcStatus(status));
  return reactor;
}

absl::StatusOr<std::unique_ptr<RewardServer>> RewardServer::Start(
    const RewardServerOptions& options, RewardFunctionPtr function) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (function == nullptr) return absl::InvalidArgumentError("RewardServer: no reward function");
  std::unique_ptr<RewardServer> server(new RewardServer());
  server->service_ = std::make_unique<RewardServiceImpl>(std::move(function), options);
  absl::StatusOr<std::unique_ptr<grpc::Server>> grpc_server =
      StartGrpcServer(options.listen_address, {server->service_.get()}, &server->port_,
                      options.max_request_bytes, options.tls, "reward server tls");
  if (!grpc_server.ok()) return grpc_server.status();
  server->server_ = *std::move(grpc_server);
  server->address_ = BoundAddress(options.listen_address, server->port_);
  return server;
}

RewardServer::~RewardServer() { Shutdown(absl::ZeroDuration()); }

void RewardServer::Shutdown(absl::Duration grace) {
  if (shut_down_ || server_ == nullptr) return;
  shut_down_ = true;
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
}

}  // namespace lightrl
