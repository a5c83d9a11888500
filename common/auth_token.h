// The shared auth token as the processes of a run receive it: from a file or, for workers
// the controller spawns, from the environment, never on a command line (any local user
// reads /proc/<pid>/cmdline). Owns the checks a token must pass; the gRPC side
// (proto/grpc_util.h) owns how it is sent and compared.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lightrl {

// The variable a spawned worker finds its token in. Only the CLI reads it, and removes it
// at once so that processes the worker starts (sandboxed programs) do not inherit it.
inline constexpr char kAuthTokenEnvVar[] = "LIGHTRL_AUTH_TOKEN";

// `raw` without surrounding whitespace; INVALID_ARGUMENT naming `source` when nothing is
// left or the token has whitespace or control characters inside (it travels in an HTTP/2
// header).
absl::StatusOr<std::string> NormalizeAuthToken(absl::string_view raw, absl::string_view source);

// The token in the file at `path` (surrounding whitespace, such as the final newline,
// stripped). Errors name the path.
absl::StatusOr<std::string> ReadAuthTokenFile(const std::string& path);

}  // namespace lightrl
