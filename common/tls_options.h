// TLS settings of one lightrl process's gRPC side: the PEM files of its certificate, key
// and CA, and whether its servers require client certificates (mutual TLS). A plain
// struct with its checks, free of gRPC, protobuf and torch so that configs and options
// can hold it; proto/grpc_util.h turns it into server and channel credentials.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lightrl {

// Largest PEM file read for TLS: a certificate chain or CA bundle is kilobytes.
inline constexpr int64_t kMaxPemFileBytes = int64_t{1} << 20;

struct TlsOptions {
  // PEM CA bundle. A client verifies the server's certificate against it (empty: the
  // system's roots); a server with client_auth verifies client certificates against it.
  std::string ca_file;
  // PEM certificate chain and private key of this side. A server serves TLS when they are
  // set; a client presents them to a server that requires client certificates.
  std::string cert_file;
  std::string key_file;
  // Servers require a client certificate signed by ca_file (mutual TLS).
  bool client_auth = false;

  // A server listens with TLS, a client connects with TLS.
  bool server_enabled() const { return !cert_file.empty(); }
  bool client_enabled() const { return !ca_file.empty() || !cert_file.empty(); }

  // cert_file and key_file are given together or not at all; client_auth needs a CA to
  // check against and a certificate to serve with. `what` prefixes the messages (a flag
  // set, a config section).
  absl::Status Validate(const std::string& what = "tls") const {
    if (cert_file.empty() != key_file.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a certificate and its key go together, got ",
          cert_file.empty() ? "a key without a certificate" : "a certificate without a key"));
    }
    if (client_auth && (ca_file.empty() || cert_file.empty())) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": client_auth (mutual TLS) needs the CA that signs client certificates and "
                "this side's own certificate and key"));
    }
    return absl::OkStatus();
  }
};

}  // namespace lightrl
