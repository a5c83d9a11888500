// Spawned reward workers as real `lightrl reward-worker` processes on loopback, scored
// through the reward router: one killed with SIGKILL between Score calls is restarted on
// its address and scoring goes on; one that dies past its restarts fails the call naming
// the worker and how it ended.
#include "rl/reward_workers.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "reward/reward_router.h"
#include "rollout/coordinator.h"

namespace lightrl {
namespace {

std::vector<RewardInput> Inputs() {
  std::vector<RewardInput> inputs(2);
  inputs[0].prompt = "2+2=";
  inputs[0].response = "The answer is 4";
  inputs[0].ground_truth = "4";
  inputs[1].prompt = "3+3=";
  inputs[1].response = "The answer is 7";
  inputs[1].ground_truth = "6";
  return inputs;
}

void ExpectScored(RewardRouter& router) {
  absl::StatusOr<std::vector<RewardResult>> results = router.ScoreBatch(Inputs());
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_DOUBLE_EQ((*results)[0].score, 1.0);
  EXPECT_DOUBLE_EQ((*results)[1].score, 0.0);
}

TEST(RewardWorkersTest, AKilledWorkerIsRestartedOnItsAddressUntilItsRestartsRunOut) {
  const char* exe = std::getenv("LIGHTRL_BIN");
  ASSERT_NE(exe, nullptr) << "set LIGHTRL_BIN to the lightrl executable (CTest does)";
  absl::StatusOr<std::unique_ptr<Coordinator>> coordinator = Coordinator::Start({});
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  RewardWorkersOptions options;
  options.exe = exe;
  options.kinds = {"math"};
  options.log_dir = absl::StrCat(::testing::TempDir(), "reward_workers_test_", ::getpid());
  options.start_timeout = absl::Seconds(60);
  options.max_restarts = 1;
  absl::StatusOr<std::unique_ptr<RewardWorkers>> workers =
      RewardWorkers::Start(options, coordinator->get());
  ASSERT_TRUE(workers.ok()) << workers.status();
  const std::string address = (*workers)->Addresses().at("math");
  ASSERT_FALSE(address.empty());

  RewardRouterOptions router_options;
  RewardRouterEntry entry;
  entry.name = "math";
  entry.address = address;
  entry.reward_kind = "math";
  router_options.entries = {entry};
  router_options.initial_backoff = absl::Milliseconds(20);
  router_options.max_backoff = absl::Milliseconds(200);
  router_options.server_wait = absl::Seconds(60);
  RewardWorkers* supervisor = workers->get();
  router_options.check_server = [supervisor](const std::string& down) {
    return supervisor->Check(down);
  };
  absl::StatusOr<std::unique_ptr<RewardRouter>> router = RewardRouter::Create(router_options);
  ASSERT_TRUE(router.ok()) << router.status();
  ExpectScored(**router);

  // Killed between Score calls: the next call restarts it on the same address.
  const pid_t first = (*workers)->Pid("math");
  ASSERT_EQ(::kill(first, SIGKILL), 0);
  ExpectScored(**router);
  const pid_t restarted = (*workers)->Pid("math");
  EXPECT_NE(restarted, first);
  EXPECT_EQ((*workers)->Addresses().at("math"), address);
  // The restarted process outlives the call that found its predecessor dead (its
  // parent-death signal is not tied to that call's thread) and keeps scoring.
  absl::SleepFor(absl::Seconds(1));
  ExpectScored(**router);
  EXPECT_EQ((*workers)->Pid("math"), restarted);

  // Killed again, past its one restart: the call fails naming the worker.
  ASSERT_EQ(::kill((*workers)->Pid("math"), SIGKILL), 0);
  absl::StatusOr<std::vector<RewardResult>> failed = (*router)->ScoreBatch(Inputs());
  ASSERT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_TRUE(absl::StrContains(
      failed.status().message(),
      absl::StrCat("reward worker reward-local-math (", address,
                   ") killed by signal 9 (Killed) after 1 restart(s); "
                   "fleet.reward_worker_restarts = 1 allows no more")))
      << failed.status();
}

}  // namespace
}  // namespace lightrl
