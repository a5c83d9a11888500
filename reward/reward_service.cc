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
namespace {

// Splits "host:port" at the last ':' (so "[::1]:0" works); false without a port.
bool SplitHostPort(const std::string& address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = address.substr(0, colon);
  *port = address.substr(colon + 1);
  return true;
}

// Compares without an early exit so timing does not reveal the token's prefix.
bool TokensEqual(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

bool IsLoopbackAddress(const std::string& address) {
  std::string host, port;
  if (!SplitHostPort(address, &host, &port)) return false;
  if (host == "localhost" || host == "[::1]" || host == "::1") return true;
  std::vector<std::string> octets = absl::StrSplit(host, '.');
  if (octets.size() != 4 || octets[0] != "127") return false;
  for (const std::string& octet : octets) {
    int value = 0;
    if (!absl::SimpleAtoi(octet, &value) || value < 0 || value > 255) return false;
  }
  return true;
}

absl::Status RewardServerOptions::Validate() const {
  std::string host, port;
  int port_number = 0;
  if (!SplitHostPort(listen_address, &host, &port) || !absl::SimpleAtoi(port, &port_number) ||
      port_number < 0 || port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen address must be host:port (port 0 picks a free one), got \"", listen_address,
        "\""));
  }
  if (num_scoring_threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_scoring_threads must be >= 0 (0 = one per core), got ", num_scoring_threads));
  }
  if (auth_token.empty() && !IsLoopbackAddress(listen_address)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen address \"", listen_address,
        "\" is not loopback: an auth token is required (--auth-token)"));
  }
  return absl::OkStatus();
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  const grpc::StatusCode grpc_code =
      code > 0 && code <= static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)
          ? static_cast<grpc::StatusCode>(code)
          : grpc::StatusCode::UNKNOWN;
  return grpc::Status(grpc_code, std::string(status.message()));
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
  if (auth_token_.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing `authorization` metadata (auth token)");
  }
  absl::string_view presented(it->second.data(), it->second.size());
  absl::ConsumePrefix(&presented, "Bearer ");
  if (!TokensEqual(presented, auth_token_)) {
    return absl::UnauthenticatedError("wrong auth token in `authorization` metadata");
  }
  return absl::OkStatus();
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

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& address,
                                                              grpc::Service* service,
                                                              int* bound_port) {
  grpc::ServerBuilder builder;
  *bound_port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), bound_port);
  builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *bound_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("could not listen on \"", address, "\" (address in use or invalid?)"));
  }
  return server;
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
  std::string host, port;
  SplitHostPort(options.listen_address, &host, &port);
  server->address_ = absl::StrCat(host, ":", server->port_);
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
