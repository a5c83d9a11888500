// A tiny `--name value` / `--name=value` flag parser for the lightrl subcommands, and the
// one place their exit codes are decided. Every flag must be declared; unknown or repeated
// flags and missing or malformed values are usage errors.
//
// Exit codes of every `lightrl` command (docs/cli.md):
//   0  success (and --help/-h, which prints the command's usage to stdout)
//   1  runtime failure: bad config, I/O error, training or serving error
//   2  usage error: unknown command or flag, missing or invalid flag value
// `lightrl run --nproc N` exits with its first failing rank's code (128 + signal for a
// rank killed by a signal).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tls_options.h"

namespace lightrl {

enum ExitCode : int { kExitOk = 0, kExitFailure = 1, kExitUsage = 2 };

// An error in how the command was called (INVALID_ARGUMENT marked as a usage error): the
// command exits 2 and points at `lightrl <name> --help`. Flags' own errors are these.
absl::Status UsageError(absl::string_view message);
// `status` (not OK) ending the command with exit code `code` instead of 1.
absl::Status WithExitCode(absl::Status status, int code);
// The exit code a command's final status maps to: 0, the code attached by UsageError or
// WithExitCode, else 1.
int ExitCodeOf(const absl::Status& status);

// Whether `args` asks for the usage (--help or -h anywhere).
bool WantsHelp(const std::vector<std::string>& args);

// The shared body of a subcommand: prints `usage` to stdout and returns 0 for --help/-h;
// else takes the common --log-level flag out of `args` (setting the process's log level
// and LIGHTRL_LOG_LEVEL for any child it starts), runs `run`, and maps its status to the
// exit code (ExitCodeOf), printing "lightrl <name>: <message>" on failure, plus where to
// find the usage for a usage error.
int RunSubcommand(const std::string& name, const std::string& usage,
                  const std::vector<std::string>& args,
                  const std::function<absl::Status(const std::vector<std::string>&)>& run);

class Flags;

// The auth token of a worker command: the file named by --auth-token-file, else the
// LIGHTRL_AUTH_TOKEN environment variable (how the controller hands it to the workers it
// spawns; removed from the environment once read), else "" (loopback only). The one place
// that variable is read. An empty or whitespace-only token is an error; so is
// --auth-token, which would show the token to every local user in /proc.
absl::StatusOr<std::string> WorkerAuthToken(const Flags& flags);

// A worker's --max-inflight-mb in bytes: 0 when absent or 0 (the server's default, 4 x its
// message limit), else in [the message limit `max_message_mb` (named by `message_flag`),
// 65536] MiB; INVALID_ARGUMENT naming the flags otherwise.
absl::StatusOr<int64_t> InflightBudgetFlag(const Flags& flags, int64_t max_message_mb,
                                           const std::string& message_flag);

// The worker flags of TLS, for its server and its registration with a coordinator.
inline constexpr const char* kWorkerTlsSwitch = "tls-client-auth";
inline constexpr const char* kWorkerTlsUsage =
    "  --tls-cert FILE, --tls-key FILE  serve TLS with this PEM certificate chain and key\n"
    "                (plaintext without them); they are also the client certificate shown\n"
    "                to a coordinator that requires one. The auth token is checked on top\n"
    "  --tls-ca FILE PEM CA that signs the coordinator's certificate (and, with\n"
    "                --tls-client-auth, the clients')\n"
    "  --tls-client-auth  require a client certificate signed by --tls-ca (mutual TLS)\n";
// --tls-cert, --tls-key, --tls-ca and --tls-client-auth; a usage error naming the flag
// for a certificate without its key (or the reverse) or --tls-client-auth without
// --tls-ca and a certificate.
absl::StatusOr<TlsOptions> WorkerTlsFlags(const Flags& flags);

class Flags {
 public:
  // `known`: flag names without dashes; `switches`: those taking no value; `repeatable`:
  // those of `known` that may be given several times (GetAll), every other flag at most
  // once.
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& known,
                                     const std::set<std::string>& switches = {},
                                     const std::set<std::string>& repeatable = {});
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // Every value of a repeatable flag, in command-line order.
  std::vector<std::string> GetAll(const std::string& name) const;
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<std::string> Required(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;

 private:
  std::map<std::string, std::string> values_;  // the last value of each flag
  std::map<std::string, std::vector<std::string>> all_;
};

}  // namespace lightrl
