// The reward worker's gRPC side: RewardServiceImpl translates lightrl.v1 protos to
// RewardInput and delegates to a RewardFunction; RewardServer owns a listening
// grpc::Server. Owns request validation, the shared-token check and the one
// absl::Status -> grpc::Status mapping. Must not include torch (DESIGN.md section 3).
// A call whose client cancels or whose deadline passes stops being scored: its reactor's
// OnCancel sets a flag that every sandboxed run of the call polls (SandboxCancelScope),
// so abandoned code runs are killed within ~50 ms and free the worker for the next call.
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lightrl/v1/reward.grpc.pb.h"
#include "proto/grpc_util.h"
#include "reward/reward_function.h"

namespace lightrl {

// Most items one Score call may carry; larger batches are INVALID_ARGUMENT.
inline constexpr int kMaxScoreBatchItems = 4096;

// Default receive limit of a reward server. Score requests are text: a full batch of
// 4096 items at 16 KiB each; the reward router splits its batches to stay under it
// (RewardRouterOptions::max_request_bytes has the same default).
inline constexpr int kDefaultMaxScoreRequestBytes = 64 << 20;
// Smallest receive limit a reward server accepts.
inline constexpr int kMinScoreRequestBytes = 64 << 10;

struct RewardServerOptions {
  // "host:port"; port 0 picks a free port (RewardServer::address() has the real one).
  std::string listen_address = "127.0.0.1:0";
  // Shared secret expected in the `authorization` metadata ("Bearer T" or "T") of every
  // call. Empty: no check, which Validate() allows only on a loopback address.
  std::string auth_token;
  // Threads that run the reward function, so a slow reward never blocks gRPC's own
  // callback threads (Health stays responsive); 0 = the number of cores, at least 2.
  int num_scoring_threads = 0;
  // Items of one Score call scored at once (each on its own thread); 0 = the number of
  // cores, at least 2.
  int max_parallel_items = 0;
  // Largest request message accepted; a bigger one is RESOURCE_EXHAUSTED naming this
  // limit, refused by gRPC before it is parsed. In [kMinScoreRequestBytes, 1 GiB].
  int max_request_bytes = kDefaultMaxScoreRequestBytes;
  // Bytes of requests held at once across concurrent calls (from arrival until the
  // reply): a call that would pass it is RESOURCE_EXHAUSTED naming this budget, at once
  // and unparsed, and the server goes on; clients retry it with backoff. 0 =
  // kDefaultInflightMessages (4) x max_request_bytes; else at least max_request_bytes.
  int64_t max_inflight_bytes = 0;
  // TLS of the listener (server certificate, and client certificates under client_auth);
  // plaintext when tls.cert_file is empty. The auth token is checked on top.
  TlsOptions tls;

  // A non-loopback listen address without an auth token, or a field out of range, is
  // INVALID_ARGUMENT.
  absl::Status Validate() const;
};

// Registered raw so that a request that does not parse gets INVALID_ARGUMENT naming its
// type (ParseRequest) instead of gRPC's bare UNIMPLEMENTED.
using RewardServiceBase = lightrl::v1::RewardService::WithRawCallbackMethod_Score<
    lightrl::v1::RewardService::WithRawCallbackMethod_Health<lightrl::v1::RewardService::Service>>;

class RewardServiceImpl final : public RewardServiceBase {
 public:
  // Serves `function` as `options` say (validated; their zeros mean the defaults).
  RewardServiceImpl(RewardFunctionPtr function, const RewardServerOptions& options);
  ~RewardServiceImpl() override;

  const ByteBudget& inflight() const { return inflight_; }

  // Score(ScoreRequest) -> ScoreResponse. Admits the request's bytes into the in-flight
  // budget (RESOURCE_EXHAUSTED otherwise) and queues the batch for a scoring thread and
  // returns; its items are scored in parallel up to max_parallel_items. A call whose
  // client has gone (deadline, cancel) is not scored, or stops being scored, its
  // sandboxed runs killed, and ends CANCELLED. Non-finite scores become INTERNAL errors
  // and never reach the client.
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  // Health(HealthRequest) -> HealthResponse.
  grpc::ServerUnaryReactor* Health(grpc::CallbackServerContext* context,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;

 private:
  absl::Status CheckAuth(const grpc::CallbackServerContext& context) const;
  absl::Status ScoreBatch(const lightrl::v1::ScoreRequest& request,
                          lightrl::v1::ScoreResponse* response,
                          const std::atomic<bool>& cancelled);

  void RunScoringThread();

  RewardFunctionPtr function_;
  std::string auth_token_;
  int max_parallel_items_ = 1;
  ByteBudget inflight_;  // request bytes of the calls being served
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;  // last: joined before the members they use go
};

// A listening reward worker: the service plus its grpc::Server.
class RewardServer {
 public:
  // Validates `options` and starts serving `function`; returns once listening.
  static absl::StatusOr<std::unique_ptr<RewardServer>> Start(const RewardServerOptions& options,
                                                             RewardFunctionPtr function);
  ~RewardServer();

  // "host:port" with the bound port (never 0).
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // The in-flight budget of request bytes and the most it has held at once.
  int64_t inflight_budget_bytes() const { return service_->inflight().capacity(); }
  int64_t peak_inflight_bytes() const { return service_->inflight().peak(); }
  // Request bytes held now (a call's lease ends after its reply is on the wire).
  int64_t inflight_bytes() const { return service_->inflight().in_use(); }
  // Stops accepting calls and cancels those still running after `grace`. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(1));

 private:
  RewardServer() = default;

  std::unique_ptr<RewardServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace lightrl
