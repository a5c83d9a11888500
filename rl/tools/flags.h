// A tiny `--name value` / `--name=value` flag parser for the lightrl subcommands. Every
// flag must be declared; unknown or repeated flags and missing values are errors.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lightrl {

// The shared body of a subcommand: prints `usage` for --help/-h, else runs `run` and maps
// its status to an exit code, printing "lightrl <name>: <message>" on failure.
int RunSubcommand(const char* name, const char* usage, const std::vector<std::string>& args,
                  absl::Status (*run)(const std::vector<std::string>&));

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

class Flags {
 public:
  // `known`: flag names without dashes; `switches`: those taking no value.
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& known,
                                     const std::set<std::string>& switches = {});
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<std::string> Required(const std::string& name) const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace lightrl
