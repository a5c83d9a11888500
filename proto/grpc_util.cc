#include "proto/grpc_util.h"

#include <grpcpp/impl/codegen/proto_buffer_reader.h>
#include <grpcpp/impl/codegen/proto_utils.h>

#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lightrl {
namespace {

// Compares without an early exit so timing does not reveal the token's prefix.
bool TokensEqual(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The PEM file `path` (`field` of `what`, e.g. "--tls-cert"), at most kMaxPemFileBytes.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, const std::string& what,
                                        const char* field) {
  const std::string where = absl::StrCat(what, ": ", field, " \"", path, "\"");
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(where, ": cannot open the file"));
  std::string text(static_cast<size_t>(kMaxPemFileBytes) + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (static_cast<int64_t>(text.size()) > kMaxPemFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": larger than ", kMaxPemFileBytes, " bytes; not a PEM file"));
  }
  if (!absl::StrContains(text, "-----BEGIN ")) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": not a PEM file (no \"-----BEGIN \" line)"));
  }
  return text;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& tls, const std::string& what) {
  if (absl::Status status = tls.Validate(what); !status.ok()) return status;
  if (!tls.server_enabled()) {
    if (tls.client_auth) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": client_auth needs a certificate"));
    }
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions options(
      tls.client_auth ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                      : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  absl::StatusOr<std::string> key = ReadPemFile(tls.key_file, what, "key");
  if (!key.ok()) return key.status();
  absl::StatusOr<std::string> cert = ReadPemFile(tls.cert_file, what, "cert");
  if (!cert.ok()) return cert.status();
  pair.private_key = *std::move(key);
  pair.cert_chain = *std::move(cert);
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!tls.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(tls.ca_file, what, "ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *std::move(ca);
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsOptions& tls, const std::string& what) {
  if (absl::Status status = tls.Validate(what); !status.ok()) return status;
  if (!tls.client_enabled()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions options;
  if (!tls.ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(tls.ca_file, what, "ca");
    if (!ca.ok()) return ca.status();
    options.pem_root_certs = *std::move(ca);
  }
  if (!tls.cert_file.empty()) {
    absl::StatusOr<std::string> key = ReadPemFile(tls.key_file, what, "key");
    if (!key.ok()) return key.status();
    absl::StatusOr<std::string> cert = ReadPemFile(tls.cert_file, what, "cert");
    if (!cert.ok()) return cert.status();
    options.pem_private_key = *std::move(key);
    options.pem_cert_chain = *std::move(cert);
  }
  return grpc::SslCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(const std::string& address,
                                                                  const TlsOptions& tls,
                                                                  grpc::ChannelArguments args,
                                                                  const std::string& what) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      MakeChannelCredentials(tls, what);
  if (!credentials.ok()) return credentials.status();
  args.SetMaxReceiveMessageSize(kMaxRequestBytes);
  args.SetMaxSendMessageSize(kMaxRequestBytes);
  return grpc::CreateCustomChannel(address, *credentials, args);
}

std::string BoundAddress(const std::string& listen_address, int bound_port) {
  std::string host, port;
  SplitHostPort(listen_address, &host, &port);
  return absl::StrCat(host, ":", bound_port);
}

absl::Status ValidateListenAddress(const std::string& address, const std::string& auth_token,
                                   const std::string& what) {
  std::string host, port;
  int port_number = 0;
  if (!SplitHostPort(address, &host, &port) || !absl::SimpleAtoi(port, &port_number) ||
      port_number < 0 || port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " must be host:port (port 0 picks a free one), got \"", address, "\""));
  }
  if (auth_token.empty() && !IsLoopbackAddress(address)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " \"", address, "\" is not loopback: an auth token is required (--auth-token-file or LIGHTRL_AUTH_TOKEN)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateMessageLimit(int64_t bytes, int64_t min_bytes, const std::string& what) {
  if (bytes >= min_bytes && bytes <= kMaxRequestBytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be in [", min_bytes, ", ",
                                                 kMaxRequestBytes, "] bytes, got ", bytes));
}

absl::Status ValidateInflightBudget(int64_t inflight_bytes, int64_t max_message_bytes,
                                    const std::string& what) {
  if (inflight_bytes == 0 || (inflight_bytes >= max_message_bytes &&
                              inflight_bytes <= int64_t{kMaxInflightMessages} * kMaxRequestBytes)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      what, " must be 0 (", kDefaultInflightMessages, " x the message limit) or in [",
      max_message_bytes, " (the message limit), ", int64_t{kMaxInflightMessages} * kMaxRequestBytes,
      "] bytes, got ", inflight_bytes));
}

int64_t InflightBudgetBytes(int64_t inflight_bytes, int64_t max_message_bytes) {
  return inflight_bytes > 0 ? inflight_bytes : kDefaultInflightMessages * max_message_bytes;
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

absl::Status FromGrpcStatus(const grpc::Status& status, absl::string_view context) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(context, ": ", status.error_message()));
}

grpc::Status ParseRequest(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  // The reader consumes its buffer; the copy shares the slices, not the bytes.
  grpc::ByteBuffer copy(buffer);
  const size_t num_bytes = copy.Length();
  bool parsed = false;
  {
    grpc::ProtoBufferReader reader(&copy);
    parsed = reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
  }
  if (parsed) return grpc::Status::OK;
  return grpc::Status(
      grpc::StatusCode::INVALID_ARGUMENT,
      absl::StrCat("malformed ", message->GetTypeName(), " (", num_bytes,
                   " bytes): not a valid serialized ", message->GetTypeName()));
}

grpc::Status AdmitRequest(ByteBudget* budget, const grpc::ByteBuffer& request,
                          absl::string_view type_name, ByteBudget::Lease* lease) {
  if (budget == nullptr) return grpc::Status::OK;
  const int64_t num_bytes = static_cast<int64_t>(request.Length());
  absl::StatusOr<ByteBudget::Lease> admitted = budget->TryAcquire(num_bytes);
  if (!admitted.ok()) {
    return grpc::Status(ToGrpcStatus(admitted.status()).error_code(),
                        absl::StrCat(type_name, " of ", num_bytes, " bytes refused: ",
                                     admitted.status().message()));
  }
  *lease = *std::move(admitted);
  return grpc::Status::OK;
}

grpc::Status SerializeReply(const google::protobuf::MessageLite& message, grpc::ByteBuffer* buffer) {
  bool own_buffer = false;
  grpc::Status status = grpc::SerializationTraits<google::protobuf::MessageLite>::Serialize(
      message, buffer, &own_buffer);
  if (status.ok()) return status;
  return grpc::Status(grpc::StatusCode::INTERNAL,
                      absl::StrCat("could not serialize the ", message.GetTypeName(), " reply: ",
                                   status.error_message()));
}

absl::Status CheckAuthToken(const grpc::CallbackServerContext& context,
                            const std::string& auth_token) {
  if (auth_token.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError("missing `authorization` metadata (auth token)");
  }
  absl::string_view presented(it->second.data(), it->second.size());
  absl::ConsumePrefix(&presented, "Bearer ");
  if (!TokensEqual(presented, auth_token)) {
    return absl::UnauthenticatedError("wrong auth token in `authorization` metadata");
  }
  return absl::OkStatus();
}

void AddAuthToken(grpc::ClientContext* context, const std::string& auth_token) {
  if (!auth_token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", auth_token));
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& address, const std::vector<grpc::Service*>& services, int* bound_port,
    int max_receive_bytes, const TlsOptions& tls, const std::string& tls_what) {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(tls, tls_what);
  if (!credentials.ok()) return credentials.status();
  grpc::ServerBuilder builder;
  *bound_port = 0;
  // Without this a second process could bind the same port and silently take half of the
  // calls (two controllers splitting the workers, two workers one address).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(address, *credentials, bound_port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(max_receive_bytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || *bound_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("could not listen on \"", address, "\" (address in use or invalid?)"));
  }
  return server;
}

}  // namespace lightrl
