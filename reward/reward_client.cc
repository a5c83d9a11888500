#include "reward/reward_client.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <unordered_map>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "lightrl/v1/reward.grpc.pb.h"
#include "proto/grpc_util.h"

namespace lightrl {

// Keeps gRPC types out of the header.
struct RewardClient::Channel {
  std::unique_ptr<lightrl::v1::RewardService::Stub> stub;
};

namespace {

bool IsRetryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED;
}

}  // namespace

absl::Status RewardClientOptions::Validate() const {
  if (address.empty()) return absl::InvalidArgumentError("reward client: address is empty");
  if (deadline <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("reward client ", address, ": deadline must be > 0, got ",
                     absl::FormatDuration(deadline)));
  }
  if (max_attempts < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward client ", address, ": max_attempts must be >= 1, got ", max_attempts));
  }
  if (backoff_multiplier < 1.0 || initial_backoff < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reward client ", address, ": backoff must be >= 0 with multiplier >= 1, got ",
        absl::FormatDuration(initial_backoff), " x", backoff_multiplier));
  }
  if (max_concurrent_calls < 1) {
    return absl::InvalidArgumentError(absl::StrCat("reward client ", address,
                                                   ": max_concurrent_calls must be >= 1, got ",
                                                   max_concurrent_calls));
  }
  return absl::OkStatus();
}

RewardClient::RewardClient(const RewardClientOptions& options)
    : options_(options), channel_(std::make_unique<Channel>()) {}

RewardClient::~RewardClient() = default;

bool RewardClient::HasCapacity() const { return num_in_flight_ < options_.max_concurrent_calls; }

absl::StatusOr<std::unique_ptr<RewardClient>> RewardClient::Create(
    const RewardClientOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  std::unique_ptr<RewardClient> client(new RewardClient(options));
  // Replies up to kMaxRequestBytes: gRPC's 4 MiB default would refuse a full batch's.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateClientChannel(
      options.address, options.tls, {}, absl::StrCat("reward client ", options.address, " tls"));
  if (!channel.ok()) return channel.status();
  client->channel_->stub = lightrl::v1::RewardService::NewStub(*channel);
  return client;
}

namespace {

// Runs `call` (one attempt with a fresh context) until it succeeds, fails with a
// non-retryable code, or the attempts run out.
absl::Status CallWithRetries(const RewardClientOptions& options, const char* method,
                             const std::function<grpc::Status(grpc::ClientContext*)>& call) {
  absl::Duration backoff = options.initial_backoff;
  grpc::Status last;
  for (int attempt = 1; attempt <= options.max_attempts; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options.deadline));
    AddAuthToken(&context, options.auth_token);
    last = call(&context);
    if (last.ok()) return absl::OkStatus();
    if (!IsRetryable(last.error_code())) {
      return FromGrpcStatus(last, absl::StrCat("reward server ", options.address, ": ", method,
                                               " failed"));
    }
    if (attempt < options.max_attempts) {
      absl::SleepFor(backoff);
      backoff = std::min(options.max_backoff, backoff * options.backoff_multiplier);
    }
  }
  const char* code_name =
      last.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? "DEADLINE_EXCEEDED" : "UNAVAILABLE";
  // With one attempt the caller (the reward router) does the retrying and counts the
  // attempts in its own message; a count here would contradict it.
  const std::string attempts =
      options.max_attempts == 1
          ? absl::StrCat("failed (deadline ", absl::FormatDuration(options.deadline), ")")
          : absl::StrCat("failed after ", options.max_attempts, " attempts (deadline ",
                         absl::FormatDuration(options.deadline), " each)");
  return absl::Status(static_cast<absl::StatusCode>(last.error_code()),
                      absl::StrCat("reward server ", options.address, ": ", method, " ",
                                   attempts, "; last status ", code_name, ": ",
                                   last.error_message()));
}

}  // namespace

absl::StatusOr<std::vector<RewardResponseItem>> RewardClient::Score(
    const std::vector<RewardRequestItem>& items, const std::string& reward_kind) {
  lightrl::v1::ScoreRequest request;
  request.set_reward_kind(reward_kind);
  std::unordered_map<std::string, size_t> index_of_id;
  for (size_t i = 0; i < items.size(); ++i) {
    const RewardRequestItem& item = items[i];
    if (!index_of_id.emplace(item.id, i).second) {
      return absl::InvalidArgumentError(absl::StrCat("reward client ", options_.address,
                                                     ": item ", i, " repeats id \"", item.id,
                                                     "\""));
    }
    lightrl::v1::ScoreItem* out = request.add_items();
    out->set_id(item.id);
    out->set_prompt(item.input.prompt);
    out->set_response(item.input.response);
    out->set_ground_truth(item.input.ground_truth);
    out->mutable_metadata()->insert(item.input.metadata.begin(), item.input.metadata.end());
  }

  lightrl::v1::ScoreResponse response;
  {
    mu_.LockWhen(absl::Condition(this, &RewardClient::HasCapacity));
    ++num_in_flight_;
    mu_.Unlock();
  }
  const absl::Status status =
      CallWithRetries(options_, "Score", [&](grpc::ClientContext* context) {
        response.Clear();
        return channel_->stub->Score(context, request, &response);
      });
  {
    absl::MutexLock lock(&mu_);
    --num_in_flight_;
  }
  if (!status.ok()) return status;

  if (static_cast<size_t>(response.results_size()) != items.size()) {
    return absl::InternalError(absl::StrCat("reward server ", options_.address, ": sent ",
                                            response.results_size(), " results for ",
                                            items.size(), " items"));
  }
  std::vector<RewardResponseItem> results(items.size());
  std::vector<bool> seen(items.size(), false);
  for (const lightrl::v1::ScoreResult& result : response.results()) {
    const auto it = index_of_id.find(result.id());
    if (it == index_of_id.end() || seen[it->second]) {
      return absl::InternalError(absl::StrCat("reward server ", options_.address,
                                              ": result for unknown or repeated id \"",
                                              result.id(), "\""));
    }
    if (!std::isfinite(result.score())) {
      return absl::InternalError(absl::StrCat("reward server ", options_.address,
                                              ": non-finite score ", result.score(),
                                              " for id \"", result.id(), "\""));
    }
    seen[it->second] = true;
    RewardResponseItem& out = results[it->second];
    out.id = result.id();
    out.result.score = result.score();
    out.text = result.text();
    for (const auto& [name, value] : result.components()) {
      if (!std::isfinite(value)) {
        return absl::InternalError(absl::StrCat("reward server ", options_.address,
                                                ": non-finite component \"", name, "\" ",
                                                value, " for id \"", result.id(), "\""));
      }
      out.result.components.emplace_back(name, value);
    }
    // Map order is unspecified on the wire; sort for deterministic logs.
    std::sort(out.result.components.begin(), out.result.components.end());
  }
  return results;
}

absl::StatusOr<RewardServerHealth> RewardClient::Health() {
  lightrl::v1::HealthRequest request;
  lightrl::v1::HealthResponse response;
  const absl::Status status =
      CallWithRetries(options_, "Health", [&](grpc::ClientContext* context) {
        return channel_->stub->Health(context, request, &response);
      });
  if (!status.ok()) return status;
  RewardServerHealth health;
  health.serving = response.serving();
  health.reward_kind = response.reward_kind();
  return health;
}

}  // namespace lightrl
