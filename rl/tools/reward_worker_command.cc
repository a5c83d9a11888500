// `lightrl reward-worker`: serves a built-in reward over lightrl.v1.RewardService until
// SIGINT/SIGTERM. gRPC side only: this file must never include torch headers (the
// `lightrl` executable links torch, but no translation unit sees both).
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/json.h"
#include "reward/reward_registry.h"
#include "reward/reward_service.h"
#include "rollout/coordinator.h"
#include "rollout/worker_registration.h"
#include "rl/tools/commands.h"
#include "rl/tools/flags.h"

namespace lightrl {
namespace {

// The usage text; the kinds and their options come from the reward registry.
const std::string& RewardWorkerUsage() {
  static const std::string* const usage = new std::string(absl::StrCat(
      "usage: lightrl reward-worker [--listen HOST:PORT] [--kind KIND] [--options JSON]\n"
      "                             [--auth-token-file FILE] [--coordinator HOST:PORT]\n"
      "                             [--tls-cert FILE --tls-key FILE] [--tls-ca FILE]\n"
      "                             [--tls-client-auth]\n"
      "  --listen      address to serve on (default 127.0.0.1:0; port 0 picks a free port,\n"
      "                printed as \"listening on HOST:PORT\")\n"
      "  --kind        built-in reward kind (default math); the kinds and their options:\n",
      DescribeRewardKinds(),
      "  --options     the kind's options as one JSON object, e.g. --kind length --options\n"
      "                '{\"max_length\": 4096, \"buffer\": 1024}'; options left out keep their\n"
      "                defaults, an unknown one is an error\n"
      "  --options-file  a file holding that JSON object, instead of --options\n"
      "  --format-pattern  with --kind format: the same as --options '{\"pattern\": P}'\n"
      "  --model DIR   with --kind genrm: the judge's checkpoint, the same as --options\n"
      "                '{\"model\": DIR}'\n"
      "  --auth-token-file  file holding the shared token clients send as\n"
      "                `authorization: Bearer T` (else $LIGHTRL_AUTH_TOKEN); required for any\n"
      "                non-loopback address. Never on the command line: /proc shows it.\n"
      "  --coordinator HOST:PORT of a run's coordinator to register with (role reward)\n"
      "  --worker-id   the id it registers under (default reward-HOST-PID)\n"
      "  --advertise   the address the controller should call (default the bound one)\n"
      "  --capacity    concurrent Score calls it takes (default 4)\n"
      "  --max-request-mb  largest Score request accepted, in MiB (default 64); a bigger one\n"
      "                is RESOURCE_EXHAUSTED\n"
      "  --max-inflight-mb  MiB of requests held at once across concurrent calls (default 0:\n"
      "                4 x --max-request-mb); a call past it is RESOURCE_EXHAUSTED\n",
      kWorkerTlsUsage));
  return *usage;
}

// The reward function of --kind with its options from --options, --options-file or
// --format-pattern.
absl::StatusOr<RewardFunctionPtr> MakeWorkerRewardFunction(const Flags& flags) {
  const std::string kind = flags.Get("kind", "math");
  if (FindRewardKind(kind) == nullptr) {
    return UsageError(absl::StrCat("--kind: ", UnknownRewardKindError(kind).message()));
  }
  if (flags.Has("options") && flags.Has("options-file")) {
    return UsageError("give one of --options and --options-file");
  }
  std::string flag = "--options";
  std::string text = flags.Get("options");
  if (flags.Has("options-file")) {
    flag = "--options-file";
    absl::StatusOr<std::string> read = ReadFile(flags.Get("options-file"));
    if (!read.ok()) return absl::InvalidArgumentError(absl::StrCat(flag, ": ", read.status().message()));
    text = *std::move(read);
  }
  Json options;
  if (!text.empty()) {
    absl::StatusOr<Json> parsed = Json::Parse(text);
    if (!parsed.ok()) {
      const std::string message =
          absl::StrCat(flag, ": not a JSON object: ", parsed.status().message());
      // --options is a flag value; --options-file's content is a file, like a config.
      return flag == "--options" ? UsageError(message) : absl::InvalidArgumentError(message);
    }
    options = *std::move(parsed);
  }
  if (flags.Has("format-pattern")) {
    if (kind != "format") {
      return UsageError(absl::StrCat("--format-pattern applies to --kind format, not ", kind));
    }
    if (options.is_null()) options = Json::MakeObject();
    if (!options.is_object() || options.contains("pattern")) {
      return UsageError(absl::StrCat("give the pattern once: --format-pattern or ", flag));
    }
    options.set("pattern", Json(flags.Get("format-pattern")));
  }
  if (flags.Has("model")) {
    if (kind != "genrm") {
      return UsageError(absl::StrCat("--model applies to --kind genrm, not ", kind));
    }
    if (options.is_null()) options = Json::MakeObject();
    if (!options.is_object() || options.contains("model")) {
      return UsageError(absl::StrCat("give the judge's model once: --model or ", flag));
    }
    options.set("model", Json(flags.Get("model")));
  }
  absl::StatusOr<RewardFunctionPtr> function = MakeRewardFunction(kind, options);
  if (!function.ok()) {
    const std::string message = absl::StrCat(flag, ": ", function.status().message());
    return flag == "--options" ? UsageError(message) : absl::InvalidArgumentError(message);
  }
  return function;
}

absl::Status Run(const std::vector<std::string>& args) {
  absl::StatusOr<Flags> flags =
      Flags::Parse(args, {"listen", "kind", "options", "options-file", "auth-token",
                          "auth-token-file", "coordinator", "worker-id", "advertise", "capacity",
                          "format-pattern", "max-request-mb", "max-inflight-mb", "model",
                          "tls-cert", "tls-key", "tls-ca"},
                   {kWorkerTlsSwitch});
  if (!flags.ok()) return flags.status();
  absl::StatusOr<int64_t> capacity = flags->GetInt("capacity", 4);
  if (!capacity.ok()) return capacity.status();
  if (*capacity < 1) {
    return UsageError(absl::StrCat("--capacity must be >= 1, got ", *capacity));
  }
  RewardServerOptions options;
  options.listen_address = flags->Get("listen", options.listen_address);
  absl::StatusOr<int64_t> max_request_mb =
      flags->GetInt("max-request-mb", options.max_request_bytes >> 20);
  if (!max_request_mb.ok()) return max_request_mb.status();
  if (*max_request_mb < 1 || *max_request_mb > (kMaxRequestBytes >> 20)) {
    return UsageError(absl::StrCat("--max-request-mb must be in [1, ", kMaxRequestBytes >> 20,
                                   "], got ", *max_request_mb));
  }
  options.max_request_bytes = static_cast<int>(*max_request_mb << 20);
  absl::StatusOr<int64_t> max_inflight_bytes =
      InflightBudgetFlag(*flags, *max_request_mb, "--max-request-mb");
  if (!max_inflight_bytes.ok()) return max_inflight_bytes.status();
  options.max_inflight_bytes = *max_inflight_bytes;
  absl::StatusOr<std::string> token = WorkerAuthToken(*flags);
  if (!token.ok()) return token.status();
  options.auth_token = *std::move(token);
  absl::StatusOr<TlsOptions> tls = WorkerTlsFlags(*flags);
  if (!tls.ok()) return tls.status();
  options.tls = *std::move(tls);
  absl::StatusOr<RewardFunctionPtr> function = MakeWorkerRewardFunction(*flags);
  if (!function.ok()) return function.status();
  // A kind that batches a call's items itself gets them all at once.
  if (const RewardKind* kind = FindRewardKind(flags->Get("kind", "math"));
      kind != nullptr && kind->parallel_items > 0) {
    options.max_parallel_items = kind->parallel_items;
  }

  // Block the stop signals before gRPC starts its threads so they inherit the mask and
  // only sigwait below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, *std::move(function));
  if (!server.ok()) return server.status();
  std::cout << "listening on " << (*server)->address() << std::endl;

  std::unique_ptr<WorkerRegistration> registration;
  if (flags->Has("coordinator")) {
    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    WorkerRegistrationOptions ropts;
    ropts.coordinator_address = flags->Get("coordinator");
    ropts.auth_token = options.auth_token;
    ropts.tls = options.tls;
    ropts.worker.id = flags->Get("worker-id", absl::StrCat("reward-", host, "-", ::getpid()));
    ropts.worker.role = kRewardRole;
    ropts.worker.address = flags->Get("advertise", (*server)->address());
    ropts.worker.capacity = static_cast<int>(*capacity);
    absl::StatusOr<std::unique_ptr<WorkerRegistration>> r = WorkerRegistration::Start(ropts);
    if (!r.ok()) return r.status();
    registration = *std::move(r);
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::cerr << "lightrl reward-worker: signal " << signal_number << ", shutting down\n";
  if (registration) registration->Stop();
  (*server)->Shutdown();
  return absl::OkStatus();
}

}  // namespace

int RunRewardWorkerCommand(const std::vector<std::string>& args) {
  return RunSubcommand("reward-worker", RewardWorkerUsage().c_str(), args, Run);
}

}  // namespace lightrl
