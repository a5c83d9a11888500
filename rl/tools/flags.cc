#include "rl/tools/flags.h"

#include <cstdlib>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/auth_token.h"

namespace lightrl {
namespace {

// The largest in-flight budget a server takes: kMaxInflightMessages x kMaxRequestBytes
// (proto/grpc_util.h, which the flags do not depend on), in MiB.
constexpr int64_t kMaxInflightMb = 64 * 1024;

}  // namespace

absl::StatusOr<int64_t> InflightBudgetFlag(const Flags& flags, int64_t max_message_mb,
                                           const std::string& message_flag) {
  absl::StatusOr<int64_t> mb = flags.GetInt("max-inflight-mb", 0);
  if (!mb.ok()) return mb.status();
  if (*mb != 0 && (*mb < max_message_mb || *mb > kMaxInflightMb)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-inflight-mb must be 0 (4 x ", message_flag, ") or in [", max_message_mb, " (",
        message_flag, "), ", kMaxInflightMb, "], got ", *mb));
  }
  return *mb << 20;
}

absl::StatusOr<std::string> WorkerAuthToken(const Flags& flags) {
  if (flags.Has("auth-token")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--auth-token puts the token on the command line, where any local user reads it in "
        "/proc; use --auth-token-file FILE (mode 0600) or the ",
        kAuthTokenEnvVar, " environment variable"));
  }
  const char* from_env = std::getenv(kAuthTokenEnvVar);
  std::string env_token = from_env == nullptr ? "" : from_env;
  const bool have_env = from_env != nullptr;
  // Gone before anything else runs, so nothing this worker starts inherits it.
  if (have_env && ::unsetenv(kAuthTokenEnvVar) != 0) {
    return absl::InternalError(absl::StrCat("cannot remove ", kAuthTokenEnvVar,
                                            " from the environment"));
  }
  if (flags.Has("auth-token-file")) return ReadAuthTokenFile(flags.Get("auth-token-file"));
  if (have_env) return NormalizeAuthToken(env_token, kAuthTokenEnvVar);
  return std::string();
}

int RunSubcommand(const char* name, const char* usage, const std::vector<std::string>& args,
                  absl::Status (*run)(const std::vector<std::string>&)) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << usage;
      return 0;
    }
  }
  absl::Status status = run(args);
  if (!status.ok()) {
    std::cerr << "lightrl " << name << ": " << status.message() << "\n";
    return 1;
  }
  return 0;
}

absl::StatusOr<Flags> Flags::Parse(const std::vector<std::string>& args,
                                   const std::set<std::string>& known,
                                   const std::set<std::string>& switches) {
  Flags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", arg, "\""));
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (!known.count(name) && !switches.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
    if (flags.values_.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " given twice"));
    }
    if (switches.count(name)) {
      flags.values_[name] = has_value ? value : "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    flags.values_[name] = value;
  }
  return flags;
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::string> Flags::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  return it->second;
}

absl::StatusOr<int64_t> Flags::GetInt(const std::string& name, int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be an integer, got \"", it->second, "\""));
  }
  return v;
}

absl::StatusOr<double> Flags::GetDouble(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be a number, got \"", it->second, "\""));
  }
  return v;
}

}  // namespace lightrl
