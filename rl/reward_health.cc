#include "rl/reward_health.h"

#include <algorithm>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/auth_token.h"
#include "common/status.h"
#include "reward/reward_client.h"

namespace lightrl {

absl::Status CheckRewardServers(const RunConfig& config, double timeout_s) {
  if (timeout_s <= 0) return absl::OkStatus();
  for (const auto& [name, server] : config.reward.servers) {
    if (!server.python.empty()) continue;  // the run serves it and checks its Health itself
    const std::string where = absl::StrCat(config.source, ": reward.servers.", name,
                                           ".address = \"", server.address, "\"");
    RewardClientOptions client_options;
    client_options.address = server.address;
    client_options.tls = config.tls.For(server.address);  // as the run's own calls
    client_options.max_attempts = 1;
    if (!server.auth_token_file.empty()) {
      ASSIGN_OR_RETURN(client_options.auth_token, ReadAuthTokenFile(server.auth_token_file));
    }
    const absl::Time deadline = absl::Now() + absl::Seconds(timeout_s);
    for (;;) {
      client_options.deadline = std::max(deadline - absl::Now(), absl::Milliseconds(100));
      absl::StatusOr<std::unique_ptr<RewardClient>> client = RewardClient::Create(client_options);
      if (!client.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", client.status().message()));
      const absl::StatusOr<RewardServerHealth> health = (*client)->Health();
      const absl::StatusCode code = health.status().code();
      if (code == absl::StatusCode::kUnimplemented) break;
      if (health.ok()) {
        if (health->serving) break;
        return absl::FailedPreconditionError(absl::StrCat(
            where, ": the reward server answers Health but reports that it is not serving"));
      }
      const bool retry = code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded;
      if (!retry) {
        return absl::Status(code, absl::StrCat(where, ": the reward server refused Health: ",
                                               health.status().message()));
      }
      if (absl::Now() + absl::Milliseconds(250) >= deadline) {
        return absl::UnavailableError(absl::StrFormat(
            "%s: no reward server answered within %g s (%s); start it or fix the address "
            "(--health-timeout S waits longer, 0 skips this check)",
            where, timeout_s, health.status().message()));
      }
      absl::SleepFor(absl::Milliseconds(250));
    }
  }
  return absl::OkStatus();
}

}  // namespace lightrl
