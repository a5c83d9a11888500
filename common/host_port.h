// "host:port" addresses as every lightrl server, client and config reads them: splitting
// at the last ':' and the loopback test that decides where plaintext without a token, and
// without TLS, is allowed. Header-only, free of gRPC, protobuf and torch.
#pragma once

#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace lightrl {

// Splits "host:port" at the last ':' (so "[::1]:0" works); false without a port.
inline bool SplitHostPort(const std::string& address, std::string* host, std::string* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = address.substr(0, colon);
  *port = address.substr(colon + 1);
  return true;
}

// True for 127.0.0.0/8, ::1 and localhost hosts of a "host:port" address.
inline bool IsLoopbackAddress(const std::string& address) {
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

}  // namespace lightrl
