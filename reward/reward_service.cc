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

namespace lightrl {
absl::Status RewardServerOptions::Validate() const {
  if (num_scoring_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_scoring_threads must be >= 0 (0 = one per core), got ", num_scoring_threads));
  }
  return ValidateListenAddress(listen_address, auth_token);
}

RewardServiceImpl::RewardServiceImpl(RewardFunctionPtr function, std::string auth_token,
                                     int num_scoring_threads)
    : function_(std::move(function)), auth_token_(std::move(auth_token)) {
  for (int i = 0; i < std::max(1, num_scoring_threads); ++i) {
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
                                           lightrl::v1::ScoreResponse* response) {
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
  response->mutable_results()->Reserve(num_items);
  for (int i = 0; i < num_items; ++i) {
    const lightrl::v1::ScoreItem& item = request.items(i);
    if (!ids.insert(item.id()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("Score: item ", i, " repeats id \"", item.id(), "\""));
    }
    RewardInput input;
    input.prompt = item.prompt();
    input.response = item.response();
    input.ground_truth = item.ground_truth();
    input.metadata.insert(item.metadata().begin(), item.metadata().end());
    absl::StatusOr<RewardResult> result = function_->Score(input);
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
                                                   const lightrl::v1::ScoreRequest* request,
                                                   lightrl::v1::ScoreResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status auth = CheckAuth(*context);
  if (!auth.ok()) {
    reactor->Finish(ToGrpcStatus(auth));
    return reactor;
  }
  absl::MutexLock lock(&mu_);
  queue_.push_back([this, context, request, response, reactor] {
    if (context->IsCancelled()) {
      reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "call ended before scoring"));
      return;
    }
    const absl::Status status = ScoreBatch(*request, response);
    // A failed batch returns no partial results.
    if (!status.ok()) response->Clear();
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

grpc::ServerUnaryReactor* RewardServiceImpl::Health(grpc::CallbackServerContext* context,
                                                    const lightrl::v1::HealthRequest* /*request*/,
                                                    lightrl::v1::HealthResponse* response) {
  const absl::Status status = CheckAuth(*context);
  if (status.ok()) {
    response->set_serving(true);
    response->set_reward_kind(function_->Kind());
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::StatusOr<std::unique_ptr<RewardServer>> RewardServer::Start(
    const RewardServerOptions& options, RewardFunctionPtr function) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (function == nullptr) return absl::InvalidArgumentError("RewardServer: no reward function");
  std::unique_ptr<RewardServer> server(new RewardServer());
  const int num_threads = options.num_scoring_threads > 0
                              ? options.num_scoring_threads
                              : std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  server->service_ = std::make_unique<RewardServiceImpl>(std::move(function), options.auth_token,
                                                         num_threads);
  absl::StatusOr<std::unique_ptr<grpc::Server>> grpc_server =
      StartGrpcServer(options.listen_address, server->service_.get(), &server->port_);
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
