// The gRPC plumbing every lightrl service and client shares: listen-address rules
// (loopback unless a token is set), the shared-token check, the one mapping between
// absl::Status and grpc::Status, request parsing for raw methods, server start-up, and
// the one place that makes TLS credentials for servers and channels. Owns no service;
// torch-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message_lite.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/byte_budget.h"
#include "common/host_port.h"
#include "common/tls_options.h"

namespace lightrl {

// Largest message any lightrl channel carries (protobuf itself stops at 2 GiB). Servers
// accept less, sized to what each needs (RewardServerOptions::max_request_bytes,
// RolloutWorkerOptions::max_message_bytes, CoordinatorOptions::max_request_bytes), so
// that one call cannot make a server hold gigabytes.
inline constexpr int kMaxRequestBytes = 1 << 30;

// The listen address with its port replaced by `bound_port` ("127.0.0.1:0" -> ":41234").
std::string BoundAddress(const std::string& listen_address, int bound_port);

// "host:port" with a port in [0, 65535] (0 picks a free one), and a non-empty
// `auth_token` unless the host is loopback. `what` names the flag or field in errors.
absl::Status ValidateListenAddress(const std::string& address, const std::string& auth_token,
                                   const std::string& what = "listen address");

// A server's receive limit `bytes` in [min_bytes, kMaxRequestBytes]; INVALID_ARGUMENT
// naming `what` (the option) otherwise.
absl::Status ValidateMessageLimit(int64_t bytes, int64_t min_bytes, const std::string& what);

// Requests of the largest size a server holds at once by default: its in-flight budget
// (RewardServerOptions::max_inflight_bytes, ...) is this many times its message limit
// unless set. A budget is at most kMaxInflightMessages x kMaxRequestBytes.
inline constexpr int kDefaultInflightMessages = 4;
inline constexpr int kMaxInflightMessages = 64;

// A server's in-flight budget `inflight_bytes`: 0 (the default) or in
// [max_message_bytes, kMaxInflightMessages x kMaxRequestBytes], so that a request of the
// largest accepted size can always be admitted alone; INVALID_ARGUMENT naming `what`.
absl::Status ValidateInflightBudget(int64_t inflight_bytes, int64_t max_message_bytes,
                                    const std::string& what);
// `inflight_bytes`, or kDefaultInflightMessages x `max_message_bytes` when it is 0.
int64_t InflightBudgetBytes(int64_t inflight_bytes, int64_t max_message_bytes);

// The single mapping of absl::Status to grpc::Status (codes share google.rpc.Code), and
// back, prefixing `context` ("rollout worker 127.0.0.1:5: Generate").
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view context);

// Services register their methods raw (grpc::ByteBuffer in and out) and parse requests
// here: gRPC's typed callback handlers answer bytes that fail to parse with UNIMPLEMENTED
// and an empty message, before the service sees the call.
//
// Parses `buffer` into `message`; INVALID_ARGUMENT "malformed lightrl.v1.ScoreRequest
// (N bytes): ..." naming the message type otherwise.
grpc::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);
// Serializes `message` into `buffer`; INTERNAL if protobuf refuses (over 2 GiB).
grpc::Status SerializeReply(const google::protobuf::MessageLite& message, grpc::ByteBuffer* buffer);

// Leases the `request`'s bytes from a server's in-flight `budget` (nullptr: no budget)
// for as long as the call holds its request. RESOURCE_EXHAUSTED "lightrl.v1.ScoreRequest
// of N bytes refused: <budget's reason>" when they do not fit: gRPC has read the whole
// request before any handler runs, so a call that waited would hold its bytes anyway.
grpc::Status AdmitRequest(ByteBudget* budget, const grpc::ByteBuffer& request,
                          absl::string_view type_name, ByteBudget::Lease* lease);

// The reactor of a raw unary method: owns the parsed request and the typed response,
// serializes the response into the call's reply bytes on an OK finish. A request that
// does not fit the server's in-flight `budget` is finished RESOURCE_EXHAUSTED and one
// that does not parse INVALID_ARGUMENT, both by the constructor (parsed() is false), and
// the handler only returns the reactor. The request's bytes stay leased from `budget`
// until the call is done. Deletes itself when the call is done.
template <class Request, class Response>
class ParsedUnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  ParsedUnaryReactor(const grpc::ByteBuffer* request_bytes, grpc::ByteBuffer* response_bytes,
                     ByteBudget* budget = nullptr)
      : response_bytes_(response_bytes) {
    grpc::Status status =
        AdmitRequest(budget, *request_bytes, Request::default_instance().GetTypeName(), &lease_);
    if (status.ok()) status = ParseRequest(*request_bytes, &request_);
    parsed_ = status.ok();
    if (!parsed_) Finish(status);
  }

  bool parsed() const { return parsed_; }
  const Request& request() const { return request_; }
  Response* response() { return &response_; }
  // Set once the client cancels or its deadline passes; outlives the reactor.
  const std::shared_ptr<std::atomic<bool>>& cancelled() const { return cancelled_; }

  // Finishes the call once: on OK with the serialized response, else with `status` and
  // no reply.
  void Reply(grpc::Status status) {
    if (status.ok()) status = SerializeReply(response_, response_bytes_);
    Finish(status);
  }

  void OnCancel() override { cancelled_->store(true); }
  void OnDone() override { delete this; }

 private:
  Request request_;
  Response response_;
  grpc::ByteBuffer* response_bytes_;
  bool parsed_ = false;
  std::shared_ptr<std::atomic<bool>> cancelled_ = std::make_shared<std::atomic<bool>>(false);
  ByteBudget::Lease lease_;
};

// Checks the `authorization` metadata ("Bearer T" or "T") against `auth_token`; an empty
// token accepts every call.
absl::Status CheckAuthToken(const grpc::CallbackServerContext& context,
                            const std::string& auth_token);
// Adds `auth_token` to a client call when non-empty.
void AddAuthToken(grpc::ClientContext* context, const std::string& auth_token);

// Server credentials for `tls`: plaintext unless tls.server_enabled(); else TLS with its
// certificate and key, and under client_auth a client certificate signed by its CA
// required on every connection. The PEM files are read now (each at most
// kMaxPemFileBytes); errors name `what` (the option or flag set) and the file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& tls, const std::string& what = "tls");
// Channel credentials for `tls`: plaintext unless tls.client_enabled(); else TLS that
// checks the server's certificate against ca_file (the system's roots when empty) and
// the address's host, presenting cert_file and key_file when set (mutual TLS).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls, const std::string& what = "tls");
// A channel to `address` with `tls`'s credentials and `args`, carrying messages up to
// kMaxRequestBytes each way (gRPC's default receive limit is 4 MiB).
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(
    const std::string& address, const TlsOptions& tls, grpc::ChannelArguments args = {},
    const std::string& what = "tls");

// Builds and starts a server for `services` (not owned; they must outlive the server) at
// `address`, accepting request messages up to `max_receive_bytes` (a bigger one is
// RESOURCE_EXHAUSTED "... larger than max (N vs. max_receive_bytes)" from gRPC, before
// any handler runs), with `tls`'s credentials (MakeServerCredentials; `tls_what` names
// them in errors); `*bound_port` receives the port actually bound. A port another server
// holds is an error (no port sharing).
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& address, const std::vector<grpc::Service*>& services, int* bound_port,
    int max_receive_bytes = kMaxRequestBytes, const TlsOptions& tls = TlsOptions(),
    const std::string& tls_what = "tls");
inline absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(const std::string& address,
                                                                     grpc::Service* service,
                                                                     int* bound_port) {
  return StartGrpcServer(address, std::vector<grpc::Service*>{service}, bound_port);
}

}  // namespace lightrl
