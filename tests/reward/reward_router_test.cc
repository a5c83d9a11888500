// RewardRouter against real reward servers on loopback: weighted combination of
// in-process and remote entries, retries with a bounded total time for servers that hang
// or fail, clear errors naming the entry, non-finite scores refused, the per-entry call
// limit and the input order kept on random batches.
#include "reward/reward_router.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "lightrl/v1/reward.grpc.pb.h"
#include "reward/reward_function.h"
#include "reward/reward_service.h"
#include "reward/math_reward.h"
#include "reward/reward_registry.h"

namespace lightrl {
namespace {

std::unique_ptr<RewardServer> StartServer(RewardFunctionPtr function, int num_threads = 4,
                                          const std::string& token = "") {
  RewardServerOptions options;
  options.num_scoring_threads = num_threads;
  // Items in order, one at a time: the retry tests count the calls that reach the first
  // failing item of a batch.
  options.max_parallel_items = 1;
  options.auth_token = token;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, std::move(function));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

// Short deadlines and backoff so that failure paths finish in well under a second.
RewardRouterOptions FastOptions() {
  RewardRouterOptions options;
  options.timeout = absl::Seconds(5);
  options.max_attempts = 3;
  options.initial_backoff = absl::Milliseconds(10);
  options.max_backoff = absl::Milliseconds(40);
  return options;
}

RewardRouterEntry Remote(const std::string& name, const std::string& address, double weight) {
  RewardRouterEntry entry;
  entry.name = name;
  entry.address = address;
  entry.weight = weight;
  return entry;
}

RewardRouterEntry Builtin(const std::string& name, const std::string& kind, double weight) {
  RewardRouterEntry entry;
  entry.name = name;
  entry.kind = kind;
  entry.weight = weight;
  return entry;
}

std::unique_ptr<RewardRouter> MakeRouter(const RewardRouterOptions& options) {
  absl::StatusOr<std::unique_ptr<RewardRouter>> router = RewardRouter::Create(options);
  EXPECT_TRUE(router.ok()) << router.status();
  return router.ok() ? *std::move(router) : nullptr;
}

std::vector<RewardInput> Inputs(int n) {
  std::vector<RewardInput> inputs(n);
  for (int i = 0; i < n; ++i) {
    inputs[i].prompt = absl::StrCat(i);
    inputs[i].response = absl::StrCat("Adding up, the answer is ", i);
    inputs[i].ground_truth = absl::StrCat(i);
  }
  return inputs;
}

double Component(const RewardResult& r, const std::string& name) {
  for (const auto& [key, value] : r.components) {
    if (key == name) return value;
  }
  ADD_FAILURE() << "no component " << name;
  return std::nan("");
}

// 0.5 for a boxed answer, with the verdict as a component; a remote style check.
class BoxedStyleReward final : public RewardFunction {
 public:
  std::string Kind() const override { return "style"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    const bool boxed = absl::StrContains(input.response, "\\boxed{");
    return RewardResult{boxed ? 0.5 : 0.0, {{"boxed", boxed ? 1.0 : 0.0}}};
  }
};

TEST(RewardRouterTest, WeightsInProcessAndRemoteRewards) {
  std::unique_ptr<RewardServer> server =
      StartServer(std::make_unique<BoxedStyleReward>(), 2, "tok3n");
  ASSERT_NE(server, nullptr);
  RewardRouterOptions options = FastOptions();
  options.entries = {Builtin("correct", "math", 1.0), Remote("style", server->address(), 0.2),
                     Builtin("format", "format", 0.5)};
  options.entries[1].auth_token = "tok3n";
  options.entries[1].reward_kind = "style";
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  ASSERT_NE(router, nullptr);

  std::vector<RewardInput> inputs(4);
  inputs[0].response = "2+2 is four, so \\boxed{4}";
  inputs[1].response = "\\boxed{5}";
  inputs[2].response = "Two and two.\nAnswer: 4";
  inputs[3].response = "no idea";
  for (RewardInput& input : inputs) input.ground_truth = "4";
  absl::StatusOr<std::vector<RewardResult>> results = router->ScoreBatch(inputs);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), inputs.size());
  const double expected[] = {1.0 + 0.2 * 0.5 + 0.5, 0.2 * 0.5, 1.0 + 0.5, 0.0};
  for (size_t i = 0; i < inputs.size(); ++i) {
    const RewardResult& r = (*results)[i];
    EXPECT_DOUBLE_EQ(r.score, expected[i]) << inputs[i].response;
    const double correct = MathReward(inputs[i].response, "4").score;
    EXPECT_DOUBLE_EQ(Component(r, "correct"), correct);
    EXPECT_DOUBLE_EQ(Component(r, "correct/correct"), correct);
    EXPECT_DOUBLE_EQ(Component(r, "style"), 0.2 * 0.5 * Component(r, "style/boxed"));
    EXPECT_DOUBLE_EQ(Component(r, "format"), 0.5 * Component(r, "format/format"));
    EXPECT_EQ(r.components.size(), 7u);  // 3 weighted parts + 2 + 1 + 1 of the entries'
  }
  EXPECT_TRUE(router->ScoreBatch({}).ok());
}

// Blocks each call past any deadline the test sets, like a wedged verifier.
class HangingReward final : public RewardFunction {
 public:
  std::string Kind() const override { return "hang"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    ++num_calls;
    release.WaitForNotificationWithTimeout(absl::Seconds(10));
    return RewardResult{1.0, {}};
  }
  std::atomic<int> num_calls{0};
  absl::Notification release;
};

TEST(RewardRouterTest, HangingServerIsRetriedThenFailsWithDeadlineExceeded) {
  auto function = std::make_unique<HangingReward>();
  HangingReward* hanging = function.get();
  std::unique_ptr<RewardServer> server = StartServer(std::move(function), 4);
  ASSERT_NE(server, nullptr);
  RewardRouterOptions options = FastOptions();
  options.timeout = absl::Milliseconds(200);
  options.entries = {Builtin("correct", "math", 1.0), Remote("judge", server->address(), 1.0)};
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  ASSERT_NE(router, nullptr);

  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<RewardResult>> results = router->ScoreBatch(Inputs(3));
  const absl::Duration elapsed = absl::Now() - start;
  // One hung item per attempt; released, the rest of each batch would be scored too.
  const int num_calls = hanging->num_calls.load();
  hanging->release.Notify();
  EXPECT_EQ(results.status().code(), absl::StatusCode::kDeadlineExceeded) << results.status();
  const std::string message(results.status().message());
  EXPECT_TRUE(absl::StrContains(message, "entry \"judge\"")) << message;
  EXPECT_TRUE(absl::StrContains(message, server->address())) << message;
  EXPECT_TRUE(absl::StrContains(message, "after 3 attempt(s)")) << message;
  // The router counts the attempts; the client's part of the message counts none.
  EXPECT_FALSE(absl::StrContains(message, "1 attempt")) << message;
  EXPECT_TRUE(absl::StrContains(message, "DEADLINE_EXCEEDED")) << message;
  EXPECT_EQ(num_calls, 3);
  // Three 200 ms attempts and two short sleeps; well below the hang itself.
  EXPECT_GE(elapsed, absl::Milliseconds(600));
  EXPECT_LT(elapsed, absl::Seconds(3));
}

// Fails its first `num_failures` items with `code`, then scores 1.
class FlakyReward final : public RewardFunction {
 public:
  FlakyReward(int num_failures, absl::StatusCode code) : num_failures_(num_failures), code_(code) {}
  std::string Kind() const override { return "flaky"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    if (num_calls++ < num_failures_) return absl::Status(code_, "verifier crashed");
    return RewardResult{1.0, {{"ok", 1.0}}};
  }
  std::atomic<int> num_calls{0};

 private:
  const int num_failures_;
  const absl::StatusCode code_;
};

TEST(RewardRouterTest, ServerThatRecoversIsScoredThroughRetries) {
  for (absl::StatusCode code : {absl::StatusCode::kInternal, absl::StatusCode::kUnavailable,
                                absl::StatusCode::kResourceExhausted}) {
    auto function = std::make_unique<FlakyReward>(2, code);
    FlakyReward* flaky = function.get();
    std::unique_ptr<RewardServer> server = StartServer(std::move(function), 2);
    ASSERT_NE(server, nullptr);
    RewardRouterOptions options = FastOptions();
    options.entries = {Remote("flaky", server->address(), 2.0)};
    std::unique_ptr<RewardRouter> router = MakeRouter(options);
    ASSERT_NE(router, nullptr);
    absl::StatusOr<std::vector<RewardResult>> results = router->ScoreBatch(Inputs(5));
    ASSERT_TRUE(results.ok()) << results.status();
    for (const RewardResult& r : *results) EXPECT_DOUBLE_EQ(r.score, 2.0);
    // Two failed calls (each stops at its first item), then the five items.
    EXPECT_EQ(flaky->num_calls.load(), 7) << absl::StatusCodeToString(code);
  }
}

TEST(RewardRouterTest, ServerThatAlwaysFailsGivesAClearError) {
  auto function = std::make_unique<FlakyReward>(1 << 30, absl::StatusCode::kInternal);
  FlakyReward* failing = function.get();
  std::unique_ptr<RewardServer> server = StartServer(std::move(function), 2);
  ASSERT_NE(server, nullptr);
  RewardRouterOptions options = FastOptions();
  options.max_attempts = 4;
  options.entries = {Builtin("correct", "math", 1.0), Remote("broken", server->address(), 1.0)};
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  ASSERT_NE(router, nullptr);
  absl::StatusOr<std::vector<RewardResult>> results = router->ScoreBatch(Inputs(3));
  EXPECT_EQ(results.status().code(), absl::StatusCode::kInternal) << results.status();
  const std::string message(results.status().message());
  EXPECT_TRUE(absl::StrContains(message, "entry \"broken\"")) << message;
  EXPECT_TRUE(absl::StrContains(message, server->address())) << message;
  EXPECT_TRUE(absl::StrContains(message, "after 4 attempt(s)")) << message;
  EXPECT_TRUE(absl::StrContains(message, "verifier crashed")) << message;
  EXPECT_EQ(failing->num_calls.load(), 4);
}

TEST(RewardRouterTest, ErrorsThatRetriesCannotFixFailAtOnce) {
  auto function = std::make_unique<FlakyReward>(1 << 30, absl::StatusCode::kInvalidArgument);
  FlakyReward* rejecting = function.get();
  std::unique_ptr<RewardServer> server = StartServer(std::move(function), 2, "right");
  ASSERT_NE(server, nullptr);

  RewardRouterOptions options = FastOptions();
  options.entries = {Remote("strict", server->address(), 1.0)};
  options.entries[0].auth_token = "right";
  absl::StatusOr<std::vector<RewardResult>> invalid = MakeRouter(options)->ScoreBatch(Inputs(2));
  EXPECT_EQ(invalid.status().code(), absl::StatusCode::kInvalidArgument) << invalid.status();
  EXPECT_TRUE(absl::StrContains(invalid.status().message(), "after 1 attempt(s)"))
      << invalid.status();
  EXPECT_EQ(rejecting->num_calls.load(), 1);

  options.entries[0].auth_token = "wrong";
  absl::StatusOr<std::vector<RewardResult>> denied = MakeRouter(options)->ScoreBatch(Inputs(2));
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kUnauthenticated) << denied.status();
  EXPECT_TRUE(absl::StrContains(denied.status().message(), "entry \"strict\"")) << denied.status();

  options.entries[0].auth_token = "right";
  options.entries[0].reward_kind = "math";
  absl::StatusOr<std::vector<RewardResult>> wrong_kind =
      MakeRouter(options)->ScoreBatch(Inputs(2));
  EXPECT_EQ(wrong_kind.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(wrong_kind.status().message(), "flaky")) << wrong_kind.status();
  EXPECT_EQ(rejecting->num_calls.load(), 1);
}

TEST(RewardRouterTest, UnreachableServerIsUnavailableNamingTheAddress) {
  std::string address;
  {
    std::unique_ptr<RewardServer> server = StartServer(std::make_unique<BoxedStyleReward>(), 1);
    ASSERT_NE(server, nullptr);
    address = server->address();
  }
  RewardRouterOptions options = FastOptions();
  options.timeout = absl::Milliseconds(300);
  options.max_attempts = 2;
  options.entries = {Remote("gone", address, 1.0)};
  absl::StatusOr<std::vector<RewardResult>> results = MakeRouter(options)->ScoreBatch(Inputs(1));
  EXPECT_EQ(results.status().code(), absl::StatusCode::kUnavailable) << results.status();
  EXPECT_TRUE(absl::StrContains(results.status().message(), address)) << results.status();
  EXPECT_TRUE(absl::StrContains(results.status().message(), "after 2 attempt(s)"))
      << results.status();
  EXPECT_FALSE(absl::StrContains(results.status().message(), "1 attempt")) << results.status();
}

// A reward server that goes down and comes back on its address within server_wait (a
// restarted pod, a respawned worker) is waited for, spending no attempt on it.
TEST(RewardRouterTest, ServerThatComesBackWithinServerWaitIsScored) {
  std::string address;
  {
    std::unique_ptr<RewardServer> server = StartServer(std::make_unique<BoxedStyleReward>(), 1);
    ASSERT_NE(server, nullptr);
    address = server->address();
  }
  RewardRouterOptions options = FastOptions();
  options.max_attempts = 2;
  options.server_wait = absl::Seconds(30);
  options.entries = {Remote("style", address, 1.0)};
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  std::unique_ptr<RewardServer> back;
  std::thread restart([&] {
    absl::SleepFor(absl::Seconds(1));
    RewardServerOptions server_options;
    server_options.listen_address = address;
    absl::StatusOr<std::unique_ptr<RewardServer>> started =
        RewardServer::Start(server_options, std::make_unique<BoxedStyleReward>());
    EXPECT_TRUE(started.ok()) << started.status();
    if (started.ok()) back = *std::move(started);
  });
  const absl::Time start = absl::Now();
  std::vector<RewardInput> inputs = Inputs(2);
  inputs[1].response = "\\boxed{1}";
  absl::StatusOr<std::vector<RewardResult>> results = router->ScoreBatch(inputs);
  restart.join();
  ASSERT_TRUE(results.ok()) << results.status();
  EXPECT_GE(absl::Now() - start, absl::Seconds(1));
  EXPECT_DOUBLE_EQ((*results)[0].score, 0.0);
  EXPECT_DOUBLE_EQ((*results)[1].score, 0.5);
}

// One that stays down fails once server_wait has passed, naming its address; a
// check_server verdict (a supervisor that gave up on it) ends the wait at once.
TEST(RewardRouterTest, ServerThatStaysDownFailsAfterServerWaitNamingTheAddress) {
  std::string address;
  {
    std::unique_ptr<RewardServer> server = StartServer(std::make_unique<BoxedStyleReward>(), 1);
    ASSERT_NE(server, nullptr);
    address = server->address();
  }
  RewardRouterOptions options = FastOptions();
  options.server_wait = absl::Milliseconds(600);
  options.entries = {Remote("gone", address, 1.0)};
  absl::Time start = absl::Now();
  absl::StatusOr<std::vector<RewardResult>> results = MakeRouter(options)->ScoreBatch(Inputs(1));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(600));
  EXPECT_EQ(results.status().code(), absl::StatusCode::kUnavailable) << results.status();
  EXPECT_TRUE(absl::StrContains(results.status().message(),
                                absl::StrCat("entry \"gone\" (reward server ", address,
                                             "): the server did not come back within "
                                             "server_wait = 600ms")))
      << results.status();

  options.server_wait = absl::Seconds(60);
  std::atomic<int> checks{0};
  options.check_server = [&](const std::string& checked) {
    EXPECT_EQ(checked, address);
    return ++checks < 3 ? absl::OkStatus()
                        : absl::FailedPreconditionError("its supervisor gave up on it");
  };
  start = absl::Now();
  results = MakeRouter(options)->ScoreBatch(Inputs(1));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(checks.load(), 3);
  EXPECT_EQ(results.status().code(), absl::StatusCode::kFailedPrecondition) << results.status();
  EXPECT_TRUE(absl::StrContains(results.status().message(),
                                absl::StrCat(address, "): its supervisor gave up on it")))
      << results.status();
}

class NanReward final : public RewardFunction {
 public:
  std::string Kind() const override { return "nan"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    return RewardResult{std::numeric_limits<double>::quiet_NaN(), {}};
  }
};

// A third-party server that ignores the protocol's finiteness rule.
class InfinitySendingService final : public lightrl::v1::RewardService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const lightrl::v1::ScoreRequest* request,
                                  lightrl::v1::ScoreResponse* response) override {
    for (const lightrl::v1::ScoreItem& item : request->items()) {
      lightrl::v1::ScoreResult* result = response->add_results();
      result->set_id(item.id());
      result->set_score(1.0);
      (*result->mutable_components())["bonus"] = std::numeric_limits<double>::infinity();
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

TEST(RewardRouterTest, NonFiniteScoresAreErrorsWhereverTheyArise) {
  // RewardService refuses to send NaN (INTERNAL); the router retries, then fails.
  std::unique_ptr<RewardServer> server = StartServer(std::make_unique<NanReward>(), 2);
  ASSERT_NE(server, nullptr);
  RewardRouterOptions options = FastOptions();
  options.entries = {Remote("nan_server", server->address(), 1.0)};
  absl::StatusOr<std::vector<RewardResult>> remote = MakeRouter(options)->ScoreBatch(Inputs(2));
  EXPECT_EQ(remote.status().code(), absl::StatusCode::kInternal) << remote.status();
  EXPECT_TRUE(absl::StrContains(remote.status().message(), "non-finite")) << remote.status();
  EXPECT_TRUE(absl::StrContains(remote.status().message(), "nan_server")) << remote.status();

  // A server that does send infinity: RewardClient rejects the response.
  InfinitySendingService service;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> raw_server = builder.BuildAndStart();
  ASSERT_NE(raw_server, nullptr);
  options.entries = {Remote("inf_server", absl::StrCat("127.0.0.1:", port), 1.0)};
  absl::StatusOr<std::vector<RewardResult>> raw = MakeRouter(options)->ScoreBatch(Inputs(2));
  EXPECT_EQ(raw.status().code(), absl::StatusCode::kInternal) << raw.status();
  EXPECT_TRUE(absl::StrContains(raw.status().message(), "non-finite component \"bonus\""))
      << raw.status();
  raw_server->Shutdown(absl::ToChronoTime(absl::Now()));

  // In-process: refused without retries, naming the entry and the item.
  options.entries = {Builtin("correct", "math", 1.0), RewardRouterEntry{}};
  options.entries[1].name = "local_nan";
  options.entries[1].function = std::make_shared<NanReward>();
  absl::StatusOr<std::vector<RewardResult>> local = MakeRouter(options)->ScoreBatch(Inputs(2));
  EXPECT_EQ(local.status().code(), absl::StatusCode::kInternal) << local.status();
  EXPECT_TRUE(absl::StrContains(local.status().message(), "entry \"local_nan\""))
      << local.status();
  EXPECT_TRUE(absl::StrContains(local.status().message(), "for item ")) << local.status();

  // Finite scores whose weighted sum overflows.
  options.entries = {Builtin("a", "math", 1e308), Builtin("b", "math", 1e308)};
  absl::StatusOr<std::vector<RewardResult>> overflow = MakeRouter(options)->ScoreBatch(Inputs(2));
  EXPECT_EQ(overflow.status().code(), absl::StatusCode::kInternal) << overflow.status();
}

// Records the most items being scored at once; every call here carries one item, so
// that is the most calls in flight.
class ConcurrencyProbe final : public RewardFunction {
 public:
  std::string Kind() const override { return "probe"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    const int now = ++running_;
    int seen = max_running.load();
    while (now > seen && !max_running.compare_exchange_weak(seen, now)) {
    }
    absl::SleepFor(absl::Milliseconds(40));
    --running_;
    return RewardResult{0.25, {}};
  }
  std::atomic<int> max_running{0};

 private:
  std::atomic<int> running_{0};
};

TEST(RewardRouterTest, ConcurrentCallersShareThePerEntryCallLimit) {
  auto function = std::make_unique<ConcurrencyProbe>();
  ConcurrencyProbe* probe = function.get();
  std::unique_ptr<RewardServer> server = StartServer(std::move(function), 8);
  ASSERT_NE(server, nullptr);
  RewardRouterOptions options = FastOptions();
  options.max_concurrent_calls_per_entry = 2;
  options.entries = {Remote("probe", server->address(), 4.0), Builtin("correct", "math", 1.0)};
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  ASSERT_NE(router, nullptr);
  std::atomic<int> num_ok{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 8; ++i) {
    callers.emplace_back([&] {
      absl::StatusOr<std::vector<RewardResult>> r = router->ScoreBatch(Inputs(1));
      num_ok += r.ok() && (*r)[0].score == 1.0 + 4.0 * 0.25;
    });
  }
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(num_ok.load(), 8);
  EXPECT_EQ(probe->max_running.load(), 2);
}

// Echoes the prompt's number, so every result can be traced back to its input.
class EchoReward final : public RewardFunction {
 public:
  explicit EchoReward(double scale) : scale_(scale) {}
  std::string Kind() const override { return "echo"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& input) override {
    double value = 0;
    if (!absl::SimpleAtod(input.prompt, &value)) {
      return absl::InvalidArgumentError(absl::StrCat("not a number: ", input.prompt));
    }
    return RewardResult{scale_ * value, {{"value", value}}};
  }

 private:
  const double scale_;
};

TEST(RewardRouterTest, ResultsFollowInputOrderOnRandomBatches) {
  std::unique_ptr<RewardServer> server = StartServer(std::make_unique<EchoReward>(2.0), 4);
  ASSERT_NE(server, nullptr);
  RewardRouterOptions options = FastOptions();
  options.num_local_threads = 3;
  options.entries = {Remote("remote", server->address(), 1.5), RewardRouterEntry{}};
  options.entries[1].name = "local";
  options.entries[1].weight = -0.5;
  options.entries[1].function = std::make_shared<EchoReward>(-1.0);
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  ASSERT_NE(router, nullptr);

  std::mt19937 rng(20240611);
  std::uniform_real_distribution<double> value(-1000, 1000);
  // The last size needs two remote calls: kMaxScoreBatchItems is the server's limit.
  static_assert(kMaxScoreBatchItems == 4096, "the router chunks at 4096 items");
  for (int size : {1, 2, 7, 64, 257, 1000, kMaxScoreBatchItems + 905}) {
    std::vector<RewardInput> inputs(size);
    for (RewardInput& input : inputs) input.prompt = absl::StrCat(value(rng));
    absl::StatusOr<std::vector<RewardResult>> results = router->ScoreBatch(inputs);
    ASSERT_TRUE(results.ok()) << results.status();
    ASSERT_EQ(results->size(), inputs.size());
    for (int i = 0; i < size; ++i) {
      double v = 0;
      ASSERT_TRUE(absl::SimpleAtod(inputs[i].prompt, &v));
      const RewardResult& r = (*results)[i];
      ASSERT_NEAR(r.score, 1.5 * 2 * v + -0.5 * -v, 1e-9 * (1 + std::fabs(v))) << i;
      ASSERT_DOUBLE_EQ(Component(r, "remote/value"), v) << i;
      ASSERT_DOUBLE_EQ(Component(r, "local/value"), v) << i;
    }
  }
}

// A batch whose text totals several times the server's message limit is split into
// calls under the limit and scored whole; unsplit, the server would refuse it.
TEST(RewardRouterTest, BatchLargerThanTheServersMessageLimitIsSplitByBytes) {
  RewardServerOptions server_options;
  server_options.max_request_bytes = 1 << 20;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(server_options, std::make_unique<EchoReward>(1.0));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ(RewardRouterOptions().max_request_bytes, kDefaultMaxScoreRequestBytes);

  // 48 items of ~100 KiB: about 4.7 MiB, at least 5 calls of <= 1 MiB.
  std::vector<RewardInput> inputs = Inputs(48);
  for (RewardInput& input : inputs) input.response = std::string(100 << 10, 'r');
  RewardRouterOptions options = FastOptions();
  options.max_request_bytes = server_options.max_request_bytes;
  options.entries = {Remote("echo", (*server)->address(), 1.0)};
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  ASSERT_NE(router, nullptr);
  absl::StatusOr<std::vector<RewardResult>> results = router->ScoreBatch(inputs);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) EXPECT_DOUBLE_EQ((*results)[i].score, i) << i;

  // A router that believes the limit is higher sends one call, which the server refuses.
  options.max_request_bytes = 8 << 20;
  options.max_attempts = 1;
  std::unique_ptr<RewardRouter> unsplit = MakeRouter(options);
  ASSERT_NE(unsplit, nullptr);
  absl::StatusOr<std::vector<RewardResult>> refused = unsplit->ScoreBatch(inputs);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();

  // One item that no request under the limit can carry is refused without a call.
  options.max_request_bytes = server_options.max_request_bytes;
  std::unique_ptr<RewardRouter> router_again = MakeRouter(options);
  ASSERT_NE(router_again, nullptr);
  std::vector<RewardInput> huge = Inputs(2);
  huge[1].response = std::string(1 << 20, 'r');
  absl::StatusOr<std::vector<RewardResult>> too_big = router_again->ScoreBatch(huge);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
  EXPECT_TRUE(absl::StrContains(too_big.status().message(), "item 1")) << too_big.status();
  EXPECT_TRUE(absl::StrContains(too_big.status().message(), "1048576")) << too_big.status();

  options.max_request_bytes = 1000;
  EXPECT_EQ(RewardRouter::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// A RewardService on loopback that counts the Score calls and items it receives: 1 when the
// response holds the ground truth, with components "correct" and "scale" (= `scale`).
class CountingRewardService final : public v1::RewardService::Service {
 public:
  explicit CountingRewardService(double scale) : scale_(scale) {}
  grpc::Status Score(grpc::ServerContext*, const v1::ScoreRequest* request,
                     v1::ScoreResponse* response) override {
    ++calls;
    items += request->items_size();
    for (const v1::ScoreItem& item : request->items()) {
      const bool hit = absl::StrContains(item.response(), item.ground_truth());
      v1::ScoreResult* r = response->add_results();
      r->set_id(item.id());
      r->set_score(hit ? scale_ : 0.0);
      (*r->mutable_components())["correct"] = hit ? 1.0 : 0.0;
      (*r->mutable_components())["scale"] = scale_;
    }
    return grpc::Status::OK;
  }
  grpc::Status Health(grpc::ServerContext*, const v1::HealthRequest*,
                      v1::HealthResponse* response) override {
    response->set_serving(true);
    return grpc::Status::OK;
  }
  std::atomic<int> calls{0};
  std::atomic<int> items{0};

 private:
  const double scale_;
};

struct CountingServer {
  explicit CountingServer(double scale) : service(scale) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    address = absl::StrCat("127.0.0.1:", port);
  }
  ~CountingServer() { server->Shutdown(); }
  CountingRewardService service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

// One batch reaches each server as one Score call holding every item, and the per-entry
// results are each entry's own, unweighted, beside the weighted combination.
TEST(RewardRouterTest, OneCallPerServerPerBatchAndEachEntrysOwnScores) {
  CountingServer judge(0.5), verifier(2.0);
  RewardRouterOptions options = FastOptions();
  options.entries = {Remote("judge", judge.address, 3.0), Builtin("math", "math", 1.0),
                     Remote("verifier", verifier.address, -0.25)};
  std::unique_ptr<RewardRouter> router = MakeRouter(options);
  ASSERT_NE(router, nullptr);
  std::vector<RewardInput> inputs = Inputs(300);
  for (int i = 0; i < 300; i += 3) inputs[i].response = "no answer here";
  absl::StatusOr<RoutedScores> scores = router->ScoreBatchByEntry(inputs);
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_EQ(judge.service.calls.load(), 1);
  EXPECT_EQ(judge.service.items.load(), 300);
  EXPECT_EQ(verifier.service.calls.load(), 1);
  EXPECT_EQ(verifier.service.items.load(), 300);
  ASSERT_EQ(scores->combined.size(), 300u);
  ASSERT_EQ(scores->by_entry.size(), 3u);
  for (int i = 0; i < 300; ++i) {
    const bool hit = i % 3 != 0;
    const RewardResult& j = scores->by_entry[0][i];
    const RewardResult& v = scores->by_entry[2][i];
    EXPECT_EQ(j.score, hit ? 0.5 : 0.0) << i;
    EXPECT_EQ(v.score, hit ? 2.0 : 0.0) << i;
    EXPECT_EQ(Component(j, "correct"), hit ? 1.0 : 0.0) << i;
    EXPECT_EQ(Component(v, "scale"), 2.0) << i;
    // The math kind wants the answer at the end: "the answer is N" is correct.
    EXPECT_EQ(Component(scores->by_entry[1][i], "correct"), scores->by_entry[1][i].score) << i;
    const RewardResult& c = scores->combined[i];
    EXPECT_DOUBLE_EQ(c.score, 3.0 * j.score + scores->by_entry[1][i].score - 0.25 * v.score) << i;
    EXPECT_DOUBLE_EQ(Component(c, "judge"), 3.0 * j.score) << i;
    EXPECT_EQ(Component(c, "verifier/scale"), 2.0) << i;
  }
  // ScoreBatch is the same combination.
  absl::StatusOr<std::vector<RewardResult>> combined = router->ScoreBatch(inputs);
  ASSERT_TRUE(combined.ok()) << combined.status();
  EXPECT_EQ(judge.service.calls.load(), 2);
  for (int i = 0; i < 300; ++i) EXPECT_EQ((*combined)[i].score, scores->combined[i].score) << i;
  // An empty batch calls no server and has an empty row per entry.
  scores = router->ScoreBatchByEntry({});
  ASSERT_TRUE(scores.ok()) << scores.status();
  EXPECT_TRUE(scores->combined.empty());
  EXPECT_EQ(scores->by_entry.size(), 3u);
  EXPECT_EQ(judge.service.calls.load(), 2);
}

TEST(RewardRouterTest, OptionsAreValidatedNamingTheEntry) {
  RewardRouterOptions options = FastOptions();
  EXPECT_EQ(RewardRouter::Create(options).status().code(), absl::StatusCode::kInvalidArgument);

  options.entries = {Builtin("a", "math", 1.0), Builtin("a", "countdown", 1.0)};
  absl::Status status = options.Validate();
  EXPECT_TRUE(absl::StrContains(status.message(), "entries[1] (\"a\")")) << status;
  options.entries = {Builtin("a/b", "math", 1.0)};
  EXPECT_FALSE(options.Validate().ok());
  options.entries = {Builtin("a", "math", std::nan(""))};
  EXPECT_TRUE(absl::StrContains(options.Validate().message(), "weight")) << options.Validate();
  options.entries = {Builtin("a", "math", 1.0)};
  options.entries[0].address = "127.0.0.1:1";
  EXPECT_TRUE(absl::StrContains(options.Validate().message(), "exactly one"))
      << options.Validate();
  options.entries = {Builtin("a", "math", 1.0)};
  options.entries[0].auth_token = "t";
  EXPECT_FALSE(options.Validate().ok());
  options.entries = {Builtin("a", "math", 1.0)};
  options.max_attempts = 0;
  EXPECT_TRUE(absl::StrContains(options.Validate().message(), "max_attempts"));
  options = FastOptions();
  options.entries = {Builtin("a", "math", 1.0)};
  options.max_concurrent_calls_per_entry = 0;
  EXPECT_FALSE(options.Validate().ok());

  options = FastOptions();
  options.entries = {Builtin("judge", "no_such_kind", 1.0)};
  absl::Status unknown = RewardRouter::Create(options).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(unknown.message(), "entry \"judge\"")) << unknown;
  EXPECT_TRUE(absl::StrContains(unknown.message(), "no_such_kind")) << unknown;
  options.entries = {Builtin("fmt", "format", 1.0)};
  options.entries[0].options = *Json::Parse(R"({"pattern": "(unclosed"})");
  absl::Status bad_pattern = RewardRouter::Create(options).status();
  EXPECT_TRUE(absl::StrContains(bad_pattern.message(), "(unclosed")) << bad_pattern;
}

TEST(BuiltinRewardTest, FormatAndLengthKinds) {
  absl::StatusOr<RewardFunctionPtr> format = MakeRewardFunction("format");
  ASSERT_TRUE(format.ok()) << format.status();
  EXPECT_EQ((*format)->Kind(), "format");
  RewardInput input;
  input.response = "Two plus two.\n\\boxed{4}";
  EXPECT_EQ((*format)->Score(input)->score, 1.0);
  absl::StatusOr<RewardFunctionPtr> think =
      MakeRewardFunction("format", *Json::Parse(R"({"pattern": "^<think>"})"));
  ASSERT_TRUE(think.ok()) << think.status();
  EXPECT_EQ((*think)->Score(input)->score, 0.0);

  absl::StatusOr<RewardFunctionPtr> length =
      MakeRewardFunction("length", *Json::Parse(R"({"max_length": 100, "buffer": 20})"));
  ASSERT_TRUE(length.ok()) << length.status();
  input.response = std::string(90, 'x');
  EXPECT_DOUBLE_EQ((*length)->Score(input)->score, -0.5);  // 90 bytes
  input.metadata["response_tokens"] = "10";
  EXPECT_DOUBLE_EQ((*length)->Score(input)->score, 0.0);  // 10 tokens
  input.metadata["response_tokens"] = "ten";
  EXPECT_EQ((*length)->Score(input).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(
      MakeRewardFunction("length", *Json::Parse(R"({"max_length": 100, "buffer": 500})")).ok());
  EXPECT_TRUE(MakeRewardFunction("length").ok());
}

}  // namespace
}  // namespace lightrl
