// A tiny `--name value` / `--name=value` flag parser for the lightrl subcommands. Every
// flag must be declared; unknown or repeated flags and missing values are errors.
#pragma once

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
