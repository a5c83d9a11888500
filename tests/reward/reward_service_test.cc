// RewardService over real gRPC on loopback: the worker's scores equal the built-in
// functions', bad batches are rejected without taking the server down, the shared token
// is enforced, and the client's deadline, retries and non-finite checks hold against
// misbehaving servers started in this process.
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "reward/code_reward.h"
#include "reward/reward_client.h"
#include "reward/reward_function.h"
#include "reward/reward_service.h"
#include "reward/countdown_reward.h"
#include "reward/math_reward.h"
#include "reward/reward_registry.h"
#include "tests/raw_grpc_call.h"

namespace lightrl {
namespace {

std::unique_ptr<RewardServer> StartBuiltin(const std::string& kind,
                                           const std::string& address = "127.0.0.1:0",
                                           const std::string& token = "") {
  absl::StatusOr<RewardFunctionPtr> function = MakeRewardFunction(kind);
  EXPECT_TRUE(function.ok()) << function.status();
  RewardServerOptions options;
  options.listen_address = address;
  options.auth_token = token;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, *std::move(function));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

std::unique_ptr<RewardClient> MakeClient(const std::string& address,
                                         const std::string& token = "",
                                         absl::Duration deadline = absl::Seconds(10),
                                         int max_attempts = 3) {
  RewardClientOptions options;
  options.address = address;
  options.auth_token = token;
  options.deadline = deadline;
  options.max_attempts = max_attempts;
  options.initial_backoff = absl::Milliseconds(20);
  absl::StatusOr<std::unique_ptr<RewardClient>> client = RewardClient::Create(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

std::vector<RewardRequestItem> OneItem() {
  RewardRequestItem item;
  item.id = "only";
  item.input.prompt = "2+2=";
  item.input.response = "The answer is 4";
  item.input.ground_truth = "4";
  return {item};
}

TEST(RewardServiceTest, ScoresMatchBuiltinFunctionsOnRandomArithmetic) {
  std::unique_ptr<RewardServer> server = StartBuiltin("arithmetic");
  ASSERT_NE(server, nullptr);
  std::unique_ptr<RewardClient> client = MakeClient(server->address());

  absl::StatusOr<RewardServerHealth> health = client->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(health->serving);
  EXPECT_EQ(health->reward_kind, "arithmetic");

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> operand(-500, 500);
  std::uniform_int_distribution<int> style(0, 3);
  std::vector<RewardRequestItem> items;
  for (int i = 0; i < 300; ++i) {
    const int a = operand(rng), b = operand(rng);
    const bool multiply = i % 2 == 0;
    const long long truth = multiply ? 1LL * a * b : a + b;
    RewardRequestItem item;
    item.id = absl::StrCat("item-", i);
    item.input.prompt = absl::StrCat(a, multiply ? " * " : " + ", b, " = ");
    item.input.ground_truth = absl::StrCat(truth);
    switch (style(rng)) {
      case 0: item.input.response = absl::StrCat("The answer is ", truth); break;
      case 1: item.input.response = absl::StrCat("so \\boxed{", truth + 1, "}"); break;
      case 2: item.input.response = absl::StrCat("#### ", truth); break;
      default: item.input.response = "no idea"; break;
    }
    items.push_back(item);
  }
  absl::StatusOr<std::vector<RewardResponseItem>> results = client->Score(items, "arithmetic");
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), items.size());
  int num_correct = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const RewardResult expected =
        MathReward(items[i].input.response, items[i].input.ground_truth);
    EXPECT_EQ((*results)[i].id, items[i].id);
    EXPECT_DOUBLE_EQ((*results)[i].result.score, expected.score) << items[i].input.response;
    EXPECT_EQ((*results)[i].result.components.size(), expected.components.size());
    num_correct += (*results)[i].result.score == 1.0;
  }
  // The draw must exercise both outcomes for the comparison to mean anything.
  EXPECT_GT(num_correct, 30);
  EXPECT_LT(num_correct, 270);
}

TEST(RewardServiceTest, CountdownKindAndWrongKindHint) {
  std::unique_ptr<RewardServer> server = StartBuiltin("countdown");
  ASSERT_NE(server, nullptr);
  std::unique_ptr<RewardClient> client = MakeClient(server->address());
  RewardRequestItem item;
  item.id = "c";
  item.input.response = "answer: (6 - 2) * (3 + 3)";
  item.input.ground_truth = "target: 24; numbers: 6 2 3 3";
  absl::StatusOr<std::vector<RewardResponseItem>> results = client->Score({item});
  ASSERT_TRUE(results.ok()) << results.status();
  absl::StatusOr<RewardResult> expected =
      CountdownReward(item.input.response, item.input.ground_truth);
  ASSERT_TRUE(expected.ok());
  EXPECT_DOUBLE_EQ((*results)[0].result.score, expected->score);

  absl::StatusOr<std::vector<RewardResponseItem>> wrong_kind = client->Score({item}, "math");
  EXPECT_EQ(wrong_kind.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(wrong_kind.status().message(), "countdown"))
      << wrong_kind.status();
}

TEST(RewardServiceTest, BadBatchesAreInvalidArgumentAndServerKeepsServing) {
  std::unique_ptr<RewardServer> server = StartBuiltin("math");
  ASSERT_NE(server, nullptr);
  std::unique_ptr<RewardClient> client = MakeClient(server->address());

  absl::StatusOr<std::vector<RewardResponseItem>> empty = client->Score({});
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(empty.status().message(), "no items")) << empty.status();

  std::vector<RewardRequestItem> oversized(kMaxScoreBatchItems + 1, OneItem()[0]);
  for (size_t i = 0; i < oversized.size(); ++i) oversized[i].id = absl::StrCat(i);
  absl::StatusOr<std::vector<RewardResponseItem>> too_many = client->Score(oversized);
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(too_many.status().message(), "4097")) << too_many.status();

  absl::StatusOr<std::vector<RewardResponseItem>> ok = client->Score(OneItem());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_DOUBLE_EQ((*ok)[0].result.score, 1.0);
}

TEST(RewardServiceTest, MalformedBytesAreInvalidArgumentNamingTheTypeAndServerKeepsServing) {
  std::unique_ptr<RewardServer> server = StartBuiltin("math");
  ASSERT_NE(server, nullptr);
  const std::pair<std::string, std::string> methods[] = {
      {"/lightrl.v1.RewardService/Score", "lightrl.v1.ScoreRequest"},
      {"/lightrl.v1.RewardService/Health", "lightrl.v1.HealthRequest"}};
  for (const auto& [method, type] : methods) {
    const grpc::Status status = RawCall(server->address(), method, MalformedProtobufBytes());
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_TRUE(absl::StrContains(status.error_message(), "malformed " + type))
        << method << ": " << status.error_message();
  }
  // Valid bytes through the same raw path still get a real reply.
  lightrl::v1::HealthRequest health;
  std::string reply;
  ASSERT_TRUE(RawCall(server->address(), "/lightrl.v1.RewardService/Health",
                      health.SerializeAsString(), &reply).ok());
  lightrl::v1::HealthResponse health_response;
  ASSERT_TRUE(health_response.ParseFromString(reply));
  EXPECT_TRUE(health_response.serving());
  EXPECT_EQ(health_response.reward_kind(), "math");

  absl::StatusOr<std::vector<RewardResponseItem>> ok = MakeClient(server->address())->Score(OneItem());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_DOUBLE_EQ((*ok)[0].result.score, 1.0);
}

TEST(RewardServiceTest, RequestOverTheLimitIsResourceExhaustedNamingItAndServerKeepsServing) {
  absl::StatusOr<RewardFunctionPtr> function = MakeRewardFunction("math");
  ASSERT_TRUE(function.ok()) << function.status();
  RewardServerOptions options;
  options.max_request_bytes = 1 << 20;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, *std::move(function));
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<RewardClient> client = MakeClient((*server)->address());

  std::vector<RewardRequestItem> items(4, OneItem()[0]);
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].id = absl::StrCat(i);
    items[i].input.prompt = std::string(300 << 10, 'p');  // 1.2 MiB in all
  }
  absl::StatusOr<std::vector<RewardResponseItem>> refused = client->Score(items);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "1048576")) << refused.status();

  items.resize(3);  // 0.9 MiB: under the limit
  absl::StatusOr<std::vector<RewardResponseItem>> ok = client->Score(items);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->size(), 3u);

  // The default limit is 64 MiB: a request just over it is refused before it is parsed.
  std::unique_ptr<RewardServer> default_server = StartBuiltin("math");
  ASSERT_NE(default_server, nullptr);
  const grpc::Status over_default =
      RawCall(default_server->address(), "/lightrl.v1.RewardService/Score",
              std::string(kDefaultMaxScoreRequestBytes + 1, 'x'));
  EXPECT_EQ(over_default.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(absl::StrContains(over_default.error_message(),
                                absl::StrCat(kDefaultMaxScoreRequestBytes)))
      << over_default.error_message();
  EXPECT_TRUE(MakeClient(default_server->address())->Score(OneItem()).ok());

  RewardServerOptions too_small;
  too_small.max_request_bytes = 1000;
  absl::Status invalid = too_small.Validate();
  EXPECT_EQ(invalid.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(invalid.message(), "max_request_bytes")) << invalid;
}

TEST(RewardServiceTest, FullBatchLargerThanGrpcDefaultLimitIsScored) {
  std::unique_ptr<RewardServer> server = StartBuiltin("math");
  ASSERT_NE(server, nullptr);
  std::vector<RewardRequestItem> items(kMaxScoreBatchItems, OneItem()[0]);
  for (size_t i = 0; i < items.size(); ++i) {
    items[i].id = absl::StrCat(i);
    // ~8 MiB in all, twice gRPC's default receive limit.
    items[i].input.response = std::string(2048, 'x') + " The answer is 4";
  }
  absl::StatusOr<std::vector<RewardResponseItem>> results =
      MakeClient(server->address())->Score(items);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), items.size());
  EXPECT_DOUBLE_EQ(results->back().result.score, 1.0);
}

// Scores 1 with one component under a 2 KiB name: a full batch's reply is ~8 MiB.
class WideComponentReward final : public RewardFunction {
 public:
  std::string Kind() const override { return "wide"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    return RewardResult{1.0, {{std::string(2048, 'c'), 1.0}}};
  }
};

TEST(RewardServiceTest, ReplyLargerThanGrpcDefaultLimitReachesTheClient) {
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(RewardServerOptions{}, std::make_unique<WideComponentReward>());
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<RewardRequestItem> items(kMaxScoreBatchItems, OneItem()[0]);
  for (size_t i = 0; i < items.size(); ++i) items[i].id = absl::StrCat(i);
  absl::StatusOr<std::vector<RewardResponseItem>> results =
      MakeClient((*server)->address())->Score(items);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), items.size());
  ASSERT_EQ(results->back().result.components.size(), 1u);
  EXPECT_EQ(results->back().result.components[0].first.size(), 2048u);
}

TEST(RewardServiceTest, NonLoopbackNeedsTokenAndEveryCallIsChecked) {
  RewardServerOptions options;
  options.listen_address = "0.0.0.0:0";
  absl::Status no_token = options.Validate();
  EXPECT_EQ(no_token.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(no_token.message(), "auth token")) << no_token;
  EXPECT_FALSE(RewardServer::Start(options, *MakeRewardFunction("math")).ok());
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:5"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:5"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:5"));
  EXPECT_FALSE(IsLoopbackAddress("127.0.0.1.evil.com:5"));

  std::unique_ptr<RewardServer> server = StartBuiltin("math", "0.0.0.0:0", "s3cret");
  ASSERT_NE(server, nullptr);
  const std::string address = absl::StrCat("127.0.0.1:", server->port());

  absl::StatusOr<std::vector<RewardResponseItem>> missing = MakeClient(address)->Score(OneItem());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnauthenticated) << missing.status();
  absl::StatusOr<RewardServerHealth> health_missing = MakeClient(address)->Health();
  EXPECT_EQ(health_missing.status().code(), absl::StatusCode::kUnauthenticated);
  absl::StatusOr<std::vector<RewardResponseItem>> wrong =
      MakeClient(address, "s3creT")->Score(OneItem());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated) << wrong.status();
  absl::StatusOr<std::vector<RewardResponseItem>> right =
      MakeClient(address, "s3cret")->Score(OneItem());
  ASSERT_TRUE(right.ok()) << right.status();
  EXPECT_DOUBLE_EQ((*right)[0].result.score, 1.0);
}

// Blocks every call until released, like a wedged verifier.
class HangingRewardFunction final : public RewardFunction {
 public:
  std::string Kind() const override { return "hang"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    ++num_calls_;
    release_.WaitForNotificationWithTimeout(absl::Seconds(10));
    return RewardResult{};
  }
  void Release() { release_.Notify(); }
  std::atomic<int> num_calls_{0};

 private:
  absl::Notification release_;
};

TEST(RewardServiceTest, HangingServerHitsDeadlineRetriesThenClearError) {
  auto function = std::make_unique<HangingRewardFunction>();
  HangingRewardFunction* hanging = function.get();
  RewardServerOptions options;
  options.num_scoring_threads = 4;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, std::move(function));
  ASSERT_TRUE(server.ok()) << server.status();

  std::unique_ptr<RewardClient> client =
      MakeClient((*server)->address(), "", absl::Milliseconds(200), /*max_attempts=*/3);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<RewardResponseItem>> result = client->Score(OneItem());
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), (*server)->address()))
      << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "after 3 attempt"))
      << result.status();
  EXPECT_GE(elapsed, absl::Milliseconds(600));
  EXPECT_LT(elapsed, absl::Seconds(5));
  EXPECT_EQ(hanging->num_calls_.load(), 3);
  // Scoring threads are busy, yet the server still answers Health.
  absl::StatusOr<RewardServerHealth> health = client->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(health->reward_kind, "hang");
  hanging->Release();
}

// Scoring blocks until released, counting the calls that reached the function.
class GateRewardFunction final : public RewardFunction {
 public:
  std::string Kind() const override { return "gate"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    ++num_calls_;
    open_.WaitForNotificationWithTimeout(absl::Seconds(30));
    return RewardResult{};
  }
  void Open() { open_.Notify(); }
  std::atomic<int> num_calls_{0};

 private:
  absl::Notification open_;
};

// Concurrent requests of nearly the largest size: only as many as the in-flight budget
// holds are taken; the rest are RESOURCE_EXHAUSTED naming the budget at once, while the
// server keeps answering, and the bytes it holds never pass the budget.
TEST(RewardServiceTest, ConcurrentLargeCallsPastTheInflightBudgetAreRefused) {
  auto function = std::make_unique<GateRewardFunction>();
  GateRewardFunction* gate = function.get();
  RewardServerOptions options;
  options.max_request_bytes = 1 << 20;
  options.max_inflight_bytes = 2 << 20;
  options.num_scoring_threads = 8;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, std::move(function));
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->inflight_budget_bytes(), 2 << 20);

  constexpr int kCalls = 8;
  std::vector<RewardRequestItem> items = OneItem();
  items[0].input.prompt = std::string(900 << 10, 'p');  // two fit in 2 MiB, three do not
  std::vector<absl::StatusOr<std::vector<RewardResponseItem>>> results(
      kCalls, absl::UnknownError("not run"));
  std::atomic<int> num_done{0};
  std::vector<std::thread> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.emplace_back([&, i] {
      results[i] = MakeClient((*server)->address(), "", absl::Seconds(30), 1)->Score(items);
      ++num_done;
    });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while ((gate->num_calls_.load() < 2 || num_done.load() < kCalls - 2) && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(num_done.load(), kCalls - 2);
  EXPECT_EQ(gate->num_calls_.load(), 2);
  EXPECT_LE((*server)->peak_inflight_bytes(), 2 << 20);
  // Refused calls leave the server serving.
  absl::StatusOr<RewardServerHealth> health = MakeClient((*server)->address())->Health();
  EXPECT_TRUE(health.ok()) << health.status();

  gate->Open();
  for (std::thread& call : calls) call.join();
  int admitted = 0;
  for (const auto& result : results) {
    if (result.ok()) {
      ++admitted;
      continue;
    }
    EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
    EXPECT_TRUE(absl::StrContains(result.status().message(),
                                  "reward server in-flight budget (max_inflight_bytes, "
                                  "--max-inflight-mb) of 2097152 bytes"))
        << result.status();
  }
  EXPECT_EQ(admitted, 2);
  EXPECT_LE((*server)->peak_inflight_bytes(), 2 << 20);
  // With the budget free again, a call of the same size is scored. A call's lease ends after
  // its reply is sent, so the client can see the reply before the server frees the bytes.
  const absl::Time freed_by = absl::Now() + absl::Seconds(10);
  while ((*server)->inflight_bytes() > 0 && absl::Now() < freed_by) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ((*server)->inflight_bytes(), 0);
  EXPECT_TRUE(MakeClient((*server)->address(), "", absl::Seconds(30), 1)->Score(items).ok());

  // The default budget is four requests of the largest size; a budget smaller than one
  // such request is refused.
  std::unique_ptr<RewardServer> default_server = StartBuiltin("math");
  ASSERT_NE(default_server, nullptr);
  EXPECT_EQ(default_server->inflight_budget_bytes(), int64_t{4} * kDefaultMaxScoreRequestBytes);
  RewardServerOptions too_small;
  too_small.max_request_bytes = 1 << 20;
  too_small.max_inflight_bytes = (1 << 20) - 1;
  absl::Status invalid = too_small.Validate();
  EXPECT_EQ(invalid.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(invalid.message(), "max_inflight_bytes")) << invalid;
}

// Issue 15: a client that gives up (deadline) on slow code runs gets them killed, and
// the worker answers the next request at once instead of after every abandoned run's
// wall limit. One scoring thread, so the abandoned batch is in the next call's way.
TEST(RewardServiceTest, AbandonedCodeRunsAreKilledAndTheNextCallIsQuick) {
  CodeRewardOptions code;
  code.sandbox.wall_seconds = 30;
  code.sandbox.cpu_seconds = 30;
  absl::StatusOr<RewardFunctionPtr> function = MakeCodeRewardFunction(code);
  ASSERT_TRUE(function.ok()) << function.status();
  RewardServerOptions options;
  options.num_scoring_threads = 1;
  options.max_parallel_items = 2;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(options, *std::move(function));
  ASSERT_TRUE(server.ok()) << server.status();

  const std::string truth = R"({"tests":[{"input":"","output":"1"}]})";
  std::vector<RewardRequestItem> slow;
  for (int i = 0; i < 4; ++i) {
    RewardRequestItem item;
    item.id = absl::StrCat("slow", i);
    item.input.response = "```python\nimport time\ntime.sleep(60)\nprint(1)\n```";
    item.input.ground_truth = truth;
    slow.push_back(item);
  }
  std::unique_ptr<RewardClient> impatient =
      MakeClient((*server)->address(), "", absl::Seconds(1), /*max_attempts=*/1);
  absl::StatusOr<std::vector<RewardResponseItem>> gave_up = impatient->Score(slow);
  EXPECT_EQ(gave_up.status().code(), absl::StatusCode::kDeadlineExceeded) << gave_up.status();

  RewardRequestItem quick;
  quick.id = "quick";
  quick.input.response = "print(1)";
  quick.input.ground_truth = truth;
  std::unique_ptr<RewardClient> client = MakeClient((*server)->address(), "", absl::Seconds(20), 1);
  const absl::Time start = absl::Now();
  absl::StatusOr<std::vector<RewardResponseItem>> answer = client->Score({quick});
  const absl::Duration elapsed = absl::Now() - start;
  ASSERT_TRUE(answer.ok()) << answer.status();
  ASSERT_EQ(answer->size(), 1u);
  EXPECT_EQ((*answer)[0].result.score, 1.0);
  EXPECT_LT(elapsed, absl::Seconds(5));

  // Items of one call run side by side: two 1-second programs take about one second.
  std::vector<RewardRequestItem> pair;
  for (int i = 0; i < 2; ++i) {
    RewardRequestItem item;
    item.id = absl::StrCat("pair", i);
    item.input.response = "import time\ntime.sleep(1.5)\nprint(1)\n";
    item.input.ground_truth = truth;
    pair.push_back(item);
  }
  const absl::Time pair_start = absl::Now();
  absl::StatusOr<std::vector<RewardResponseItem>> both = client->Score(pair);
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ((*both)[0].result.score, 1.0);
  EXPECT_EQ((*both)[1].result.score, 1.0);
  EXPECT_LT(absl::Now() - pair_start, absl::Seconds(2.9));
}

TEST(RewardServiceTest, UnreachableServerIsUnavailableAfterRetries) {
  // Take a free port, then close it, so nothing listens there.
  std::string address;
  {
    std::unique_ptr<RewardServer> server = StartBuiltin("math");
    ASSERT_NE(server, nullptr);
    address = server->address();
  }
  std::unique_ptr<RewardClient> client = MakeClient(address, "", absl::Milliseconds(300), 2);
  absl::StatusOr<std::vector<RewardResponseItem>> result = client->Score(OneItem());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), address)) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "after 2 attempt")) << result.status();
}

// Records how many calls run at once.
class ConcurrencyProbe final : public RewardFunction {
 public:
  std::string Kind() const override { return "probe"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    const int now = ++running_;
    int seen = max_running_.load();
    while (now > seen && !max_running_.compare_exchange_weak(seen, now)) {
    }
    absl::SleepFor(absl::Milliseconds(50));
    --running_;
    return RewardResult{0.5, {}};
  }
  std::atomic<int> running_{0};
  std::atomic<int> max_running_{0};
};

TEST(RewardClientTest, ConcurrencyLimitBoundsCallsInFlight) {
  auto function = std::make_unique<ConcurrencyProbe>();
  ConcurrencyProbe* probe = function.get();
  RewardServerOptions server_options;
  server_options.num_scoring_threads = 8;
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(server_options, std::move(function));
  ASSERT_TRUE(server.ok()) << server.status();
  RewardClientOptions options;
  options.address = (*server)->address();
  options.max_concurrent_calls = 2;
  absl::StatusOr<std::unique_ptr<RewardClient>> client = RewardClient::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<std::thread> callers;
  std::atomic<int> num_ok{0};
  for (int i = 0; i < 6; ++i) {
    callers.emplace_back([&] { num_ok += (*client)->Score(OneItem()).ok(); });
  }
  for (std::thread& caller : callers) caller.join();
  EXPECT_EQ(num_ok.load(), 6);
  EXPECT_EQ(probe->max_running_.load(), 2);
}

class NanRewardFunction final : public RewardFunction {
 public:
  std::string Kind() const override { return "nan"; }
  absl::StatusOr<RewardResult> Score(const RewardInput&) override {
    return RewardResult{std::numeric_limits<double>::quiet_NaN(), {}};
  }
};

TEST(RewardServiceTest, NonFiniteScoresNeverLeaveTheServer) {
  absl::StatusOr<std::unique_ptr<RewardServer>> server =
      RewardServer::Start(RewardServerOptions{}, std::make_unique<NanRewardFunction>());
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::vector<RewardResponseItem>> result =
      MakeClient((*server)->address())->Score(OneItem());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "non-finite")) << result.status();
}

// A third-party server that does send NaN and infinity: the client must refuse them.
class NanSendingService final : public lightrl::v1::RewardService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const lightrl::v1::ScoreRequest* request,
                                  lightrl::v1::ScoreResponse* response) override {
    for (const lightrl::v1::ScoreItem& item : request->items()) {
      lightrl::v1::ScoreResult* result = response->add_results();
      result->set_id(item.id());
      result->set_score(item.response() == "inf" ? std::numeric_limits<double>::infinity()
                                                 : std::numeric_limits<double>::quiet_NaN());
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

TEST(RewardClientTest, RejectsNonFiniteScoresFromServer) {
  NanSendingService service;
  int port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server =
      StartGrpcServer("127.0.0.1:0", &service, &port);
  ASSERT_TRUE(server.ok()) << server.status();
  std::unique_ptr<RewardClient> client = MakeClient(absl::StrCat("127.0.0.1:", port));
  for (const char* response : {"nan", "inf"}) {
    std::vector<RewardRequestItem> items = OneItem();
    items[0].input.response = response;
    absl::StatusOr<std::vector<RewardResponseItem>> result = client->Score(items);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInternal) << result.status();
    EXPECT_TRUE(absl::StrContains(result.status().message(), "non-finite score"))
        << result.status();
  }
  (*server)->Shutdown();
}

}  // namespace
}  // namespace lightrl
