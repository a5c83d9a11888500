#include "rl/tools/flags.h"

#include <cstdlib>
#include <iostream>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/auth_token.h"
#include "common/log.h"

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
    return UsageError(absl::StrCat(
        "--max-inflight-mb must be 0 (4 x ", message_flag, ") or in [", max_message_mb, " (",
        message_flag, "), ", kMaxInflightMb, "], got ", *mb));
  }
  return *mb << 20;
}

absl::StatusOr<std::string> WorkerAuthToken(const Flags& flags) {
  if (flags.Has("auth-token")) {
    return UsageError(absl::StrCat(
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

absl::StatusOr<TlsOptions> WorkerTlsFlags(const Flags& flags) {
  TlsOptions tls;
  tls.cert_file = flags.Get("tls-cert");
  tls.key_file = flags.Get("tls-key");
  tls.ca_file = flags.Get("tls-ca");
  tls.client_auth = flags.Get(kWorkerTlsSwitch, "false") == "true";
  if (absl::Status status = tls.Validate("--tls-cert/--tls-key/--tls-ca/--tls-client-auth");
      !status.ok()) {
    return UsageError(status.message());
  }
  return tls;
}

namespace {
constexpr char kExitCodePayload[] = "lightrl.dev/exit_code";
}  // namespace

absl::Status WithExitCode(absl::Status status, int code) {
  if (status.ok()) return status;
  status.SetPayload(kExitCodePayload, absl::Cord(std::to_string(code)));
  return status;
}

absl::Status UsageError(absl::string_view message) {
  return WithExitCode(absl::InvalidArgumentError(message), kExitUsage);
}

int ExitCodeOf(const absl::Status& status) {
  if (status.ok()) return kExitOk;
  const auto payload = status.GetPayload(kExitCodePayload);
  int code = kExitFailure;
  if (payload.has_value() && absl::SimpleAtoi(std::string(*payload), &code)) return code;
  return kExitFailure;
}

bool WantsHelp(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

int RunSubcommand(const std::string& name, const std::string& usage,
                  const std::vector<std::string>& args,
                  const std::function<absl::Status(const std::vector<std::string>&)>& run) {
  if (WantsHelp(args)) {
    std::cout << usage;
    if (!usage.empty() && usage.back() != '\n') std::cout << "\n";
    std::cout << "common flags: --log-level debug|info|warning|error (default: "
                 "LIGHTRL_LOG_LEVEL, else info)\n";
    return kExitOk;
  }
  // --log-level is every command's, so it is taken out before the command's own parse.
  std::vector<std::string> rest;
  absl::Status status;
  for (size_t i = 0; i < args.size() && status.ok(); ++i) {
    std::string value;
    if (args[i] == "--log-level") {
      if (i + 1 >= args.size()) {
        status = UsageError("flag --log-level needs a value");
        break;
      }
      value = args[++i];
    } else if (args[i].rfind("--log-level=", 0) == 0) {
      value = args[i].substr(std::string("--log-level=").size());
    } else {
      rest.push_back(args[i]);
      continue;
    }
    absl::StatusOr<LogLevel> level = ParseLogLevel(value);
    if (!level.ok()) {
      status = UsageError(absl::StrCat("--log-level: ", level.status().message()));
      break;
    }
    SetLogLevel(*level);
    ::setenv("LIGHTRL_LOG_LEVEL", LogLevelName(*level), 1);
  }
  if (status.ok()) status = run(rest);
  const int code = ExitCodeOf(status);
  if (code != kExitOk && !status.message().empty()) {
    std::cerr << "lightrl " << name << ": " << status.message() << "\n";
    if (code == kExitUsage) {
      std::cerr << "run `lightrl " << name << " --help` for its usage\n";
    }
  }
  return code;
}

absl::StatusOr<Flags> Flags::Parse(const std::vector<std::string>& args,
                                   const std::set<std::string>& known,
                                   const std::set<std::string>& switches,
                                   const std::set<std::string>& repeatable) {
  Flags flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.rfind("--", 0) != 0) {
      return UsageError(absl::StrCat("unexpected argument \"", arg, "\""));
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (!known.count(name) && !switches.count(name)) {
      return UsageError(absl::StrCat("unknown flag --", name));
    }
    if (flags.values_.count(name) && !repeatable.count(name)) {
      return UsageError(absl::StrCat("flag --", name, " given twice"));
    }
    if (switches.count(name)) {
      flags.values_[name] = has_value ? value : "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= args.size()) {
        return UsageError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = args[++i];
    }
    flags.values_[name] = value;
    flags.all_[name].push_back(value);
  }
  return flags;
}

std::vector<std::string> Flags::GetAll(const std::string& name) const {
  auto it = all_.find(name);
  return it == all_.end() ? std::vector<std::string>() : it->second;
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::string> Flags::Required(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return UsageError(absl::StrCat("--", name, " is required"));
  return it->second;
}

absl::StatusOr<int64_t> Flags::GetInt(const std::string& name, int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return UsageError(
        absl::StrCat("--", name, " must be an integer, got \"", it->second, "\""));
  }
  return v;
}

absl::StatusOr<double> Flags::GetDouble(const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double v;
  if (!absl::SimpleAtod(it->second, &v)) {
    return UsageError(
        absl::StrCat("--", name, " must be a number, got \"", it->second, "\""));
  }
  return v;
}

}  // namespace lightrl
