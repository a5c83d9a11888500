#include "rl/async_rollouts.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"
#include "reward/reward_function.h"
#include "reward/reward_router.h"
#include "reward/reward_service.h"

namespace lightrl {
namespace {

// A rollout source in memory: serves `version_of(min_version)` and can hold every call
// until released, like a worker still generating.
class FakeSource {
 public:
  std::vector<GroupGeneration> Generate(const std::vector<GenerationRequest>& reqs, int64_t min_version) {
    std::unique_lock<std::mutex> lock(mu_);
    std::vector<std::string> ids;
    for (const auto& r : reqs) ids.push_back(r.id);
    calls_.push_back(ids);
    min_versions_.push_back(min_version);
    released_.wait(lock, [&] { return !hold_; });
    std::vector<GroupGeneration> out(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (!fail_id_.empty() && reqs[i].id == fail_id_) {
        out[i].status = absl::InvalidArgumentError(absl::StrCat("group ", reqs[i].id, ": bad prompt"));
        continue;
      }
      out[i].weight_version = version_of_(min_version);
      out[i].samples.resize(static_cast<size_t>(reqs[i].params.n));
    }
    return out;
  }
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = false;
    released_.notify_all();
  }
  std::vector<std::vector<std::string>> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  std::vector<int64_t> min_versions() {
    std::lock_guard<std::mutex> lock(mu_);
    return min_versions_;
  }

  std::function<int64_t(int64_t)> version_of_ = [](int64_t min_version) { return min_version; };
  std::string fail_id_;

 private:
  std::mutex mu_;
  std::condition_variable released_;
  bool hold_ = false;
  std::vector<std::vector<std::string>> calls_;
  std::vector<int64_t> min_versions_;
};

// What a reward server saw: how many groups (distinct prompts) it was scoring at once.
struct ServerLoad {
  std::mutex mu;
  std::map<std::string, int> active;  // prompt -> items being scored
  size_t max_groups_at_once = 0;
  int64_t items = 0;
};

// A reward that takes a fixed time per item; its score depends on the response only.
class SlowReward : public RewardFunction {
 public:
  SlowReward(std::shared_ptr<ServerLoad> load, std::chrono::milliseconds delay)
      : load_(std::move(load)), delay_(delay) {}
  std::string Kind() const override { return "slow"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& in) override {
    {
      std::lock_guard<std::mutex> lock(load_->mu);
      ++load_->active[in.prompt];
      load_->max_groups_at_once = std::max(load_->max_groups_at_once, load_->active.size());
    }
    std::this_thread::sleep_for(delay_);
    {
      std::lock_guard<std::mutex> lock(load_->mu);
      if (--load_->active[in.prompt] == 0) load_->active.erase(in.prompt);
      ++load_->items;
    }
    return RewardResult{Expected(in.response), {}};
  }
  static double Expected(const std::string& response) {
    return static_cast<double>(std::hash<std::string>{}(response) % 1000) / 1000.0;
  }

 private:
  std::shared_ptr<ServerLoad> load_;
  std::chrono::milliseconds delay_;
};

// A rollout source whose groups finish on threads of their own, one per group, each
// handed over the moment it is done: every group but `held` finishes at once, `held`
// only once the test opens the latch.
class ThreadedSource final : public RolloutSource {
 public:
  explicit ThreadedSource(std::string held) : held_(std::move(held)) {}

  std::vector<GroupGeneration> Generate(const std::vector<GenerationRequest>& reqs,
                                        int64_t min_version) override {
    std::vector<GroupGeneration> out(reqs.size());
    GenerateEach(reqs, min_version, [&out](size_t i, GroupGeneration g) { out[i] = std::move(g); });
    return out;
  }
  void GenerateEach(const std::vector<GenerationRequest>& reqs, int64_t min_version,
                    const GroupCallback& on_group) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<std::string> ids;
      for (const auto& r : reqs) ids.push_back(r.id);
      calls_.push_back(ids);
    }
    std::vector<std::thread> threads;
    for (size_t i = 0; i < reqs.size(); ++i) {
      threads.emplace_back([&, i] {
        if (reqs[i].id == held_) {
          std::unique_lock<std::mutex> lock(mu_);
          opened_cv_.wait(lock, [&] { return open_; });
        }
        GroupGeneration g;
        g.weight_version = min_version;
        g.samples.resize(static_cast<size_t>(reqs[i].params.n));
        on_group(i, std::move(g));
      });
    }
    for (std::thread& t : threads) t.join();
  }
  absl::Status PublishWeights(int64_t) override { return absl::OkStatus(); }
  std::vector<std::pair<std::string, double>> Stats() const override { return {}; }

  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    opened_cv_.notify_all();
  }
  bool open() {
    std::lock_guard<std::mutex> lock(mu_);
    return open_;
  }
  std::vector<std::vector<std::string>> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  const std::string held_;
  std::mutex mu_;
  std::condition_variable opened_cv_;
  bool open_ = false;
  std::vector<std::vector<std::string>> calls_;
};

// A reward server's log of the items it was sent: each item's prompt, and whether the
// held group's latch was open when the item arrived.
struct Arrivals {
  std::mutex mu;
  std::condition_variable changed;
  std::vector<std::pair<std::string, bool>> items;

  // Waits (at most `limit`) for `count` items of `prompt`.
  bool WaitFor(const std::string& prompt, size_t count, std::chrono::seconds limit) {
    std::unique_lock<std::mutex> lock(mu);
    return changed.wait_for(lock, limit, [&] {
      return static_cast<size_t>(std::count_if(items.begin(), items.end(), [&](const auto& item) {
               return item.first == prompt;
             })) >= count;
    });
  }
};

class ArrivalReward : public RewardFunction {
 public:
  ArrivalReward(std::shared_ptr<Arrivals> arrivals, ThreadedSource* source)
      : arrivals_(std::move(arrivals)), source_(source) {}
  std::string Kind() const override { return "arrival"; }
  absl::StatusOr<RewardResult> Score(const RewardInput& in) override {
    const bool open = source_->open();
    {
      std::lock_guard<std::mutex> lock(arrivals_->mu);
      arrivals_->items.emplace_back(in.prompt, open);
    }
    arrivals_->changed.notify_all();
    return RewardResult{static_cast<double>(in.response.size()), {}};
  }

 private:
  std::shared_ptr<Arrivals> arrivals_;
  ThreadedSource* source_;
};

// What the trainer scores for sample k of a group.
RewardInput SampleInput(const Example& ex, size_t k) {
  RewardInput in;
  in.prompt = ex.prompt;
  in.response = absl::StrCat(ex.prompt, "#", k);
  in.ground_truth = ex.answer;
  return in;
}

class AsyncRolloutsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = JoinPath(::testing::TempDir(), "async_rollouts_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  const Dataset& Data(int n) {
    std::string text;
    for (int i = 0; i < n; ++i) text += absl::StrCat("{\"prompt\": \"p", i, "\", \"answer\": \"", i, "\"}\n");
    const std::string path = JoinPath(dir_, "train.jsonl");
    EXPECT_TRUE(WriteFileAtomic(path, text).ok());
    auto ds = Dataset::Load(path, "prompt", "answer", true);
    EXPECT_TRUE(ds.ok()) << ds.status();
    data_.emplace(*std::move(ds));
    return *data_;
  }

  static AsyncRolloutOptions Options(int64_t pps, int64_t max_staleness, bool shuffle = false) {
    AsyncRolloutOptions o;
    o.prompts_per_step = pps;
    o.max_staleness = max_staleness;
    o.versions_per_step = 1;
    o.max_regenerations = 2;
    o.seed = 11;
    o.shuffle = shuffle;
    return o;
  }

  std::unique_ptr<AsyncRollouts> Make(const AsyncRolloutOptions& o, DatasetPosition start = {},
                                      int64_t published = 0, AsyncScoreFn score = nullptr) {
    EXPECT_TRUE(o.Validate().ok()) << o.Validate();
    auto make_request = [](const Example& ex, uint64_t seed) -> absl::StatusOr<GenerationRequest> {
      GenerationRequest r;
      r.id = ex.prompt;
      r.prompt = {1, 2, 3};
      r.params.n = 2;
      r.params.seed = seed;
      return r;
    };
    auto generate = [this](const std::vector<GenerationRequest>& reqs, int64_t min_version,
                           const GroupCallback& on_group) {
      std::vector<GroupGeneration> out = source_.Generate(reqs, min_version);
      for (size_t i = 0; i < out.size(); ++i) on_group(i, std::move(out[i]));
    };
    return std::make_unique<AsyncRollouts>(o, &*data_, start, published, make_request, generate,
                                           std::move(score));
  }

  // Scores through `router`: one ScoreBatch per group, as the trainer does.
  static AsyncScoreFn ScoreWith(RewardRouter* router) {
    return [router](const Example& ex, const GenerationRequest&,
                    const GroupGeneration& g) -> absl::StatusOr<GroupScores> {
      GroupScores out;
      std::vector<RewardInput> inputs;
      for (size_t k = 0; k < g.samples.size(); ++k) {
        inputs.push_back(SampleInput(ex, k));
        out.texts.push_back(inputs.back().response);
      }
      ASSIGN_OR_RETURN(out.rewards, router->ScoreBatch(inputs));
      return out;
    };
  }

  static std::vector<std::string> Prompts(const std::vector<AsyncGroup>& groups) {
    std::vector<std::string> out;
    for (const auto& g : groups) out.push_back(g.example->prompt);
    return out;
  }

  std::string dir_;
  std::optional<Dataset> data_;
  FakeSource source_;
};

TEST_F(AsyncRolloutsTest, TakesInDrawOrderAndStartsTheNextStepBeforeReturning) {
  Data(10);
  auto async = Make(Options(/*pps=*/2, /*max_staleness=*/1));
  auto taken = async->Take(2, /*learner_version=*/0, /*later=*/8);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(Prompts(*taken), (std::vector<std::string>{"p0", "p1"}));
  for (const auto& g : *taken) {
    EXPECT_EQ(g.generation.weight_version, 0);
    EXPECT_EQ(g.generations, 1);
    EXPECT_EQ(g.generation.samples.size(), 2u);
  }
  // The next step's groups were started before Take returned: one window of them.
  const AsyncRolloutStats s = async->stats();
  EXPECT_EQ(s.in_flight + s.ready_ahead, 2);
  EXPECT_EQ(s.groups_taken, 2);
  while (source_.calls().size() < 2) std::this_thread::yield();
  const auto calls = source_.calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1], (std::vector<std::string>{"p2", "p3"}));
  // The checkpoint's cursor stops after the groups taken, not the ones drawn ahead.
  EXPECT_EQ(async->consumed_position().epoch, 0);
  EXPECT_EQ(async->consumed_position().index, 2);
}

TEST_F(AsyncRolloutsTest, DrawsNothingBeyondWhatTheRunWillTake) {
  Data(10);
  auto async = Make(Options(2, 3));
  ASSERT_TRUE(async->Take(2, 0, /*later=*/2).ok());
  EXPECT_EQ(async->stats().in_flight + async->stats().ready_ahead, 2);  // window 6, demand 2
  auto last = async->Take(2, 1, /*later=*/0);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(Prompts(*last), (std::vector<std::string>{"p2", "p3"}));
  EXPECT_EQ(async->stats().in_flight + async->stats().ready_ahead, 0);
  EXPECT_EQ(async->consumed_position().index, 4);
}

TEST_F(AsyncRolloutsTest, ResumingFromTheCursorTrainsEveryPromptOncePerEpoch) {
  Data(7);
  std::vector<std::string> trained;
  DatasetPosition saved;
  {
    auto async = Make(Options(2, 2, /*shuffle=*/true));
    auto a = async->Take(2, 0, 12);
    ASSERT_TRUE(a.ok());
    for (auto& p : Prompts(*a)) trained.push_back(p);
    source_.Hold();  // the groups drawn ahead are still generating at the "crash"
    auto b = async->Take(1, 1, 11);
    source_.Release();
    ASSERT_TRUE(b.ok());
    for (auto& p : Prompts(*b)) trained.push_back(p);
    saved = async->consumed_position();
    EXPECT_GT(async->stats().in_flight + async->stats().ready_ahead, 0);
  }
  EXPECT_EQ(saved.index, 3);
  auto resumed = Make(Options(2, 2, true), saved, /*published=*/2);
  for (int step = 0; step < 2; ++step) {
    auto g = resumed->Take(2, 2 + step, 2 - 2 * step);
    ASSERT_TRUE(g.ok()) << g.status();
    for (auto& p : Prompts(*g)) trained.push_back(p);
  }
  std::sort(trained.begin(), trained.end());
  EXPECT_EQ(trained, (std::vector<std::string>{"p0", "p1", "p2", "p3", "p4", "p5", "p6"}));
  // The next epoch starts with the run's next Take.
  EXPECT_EQ(resumed->consumed_position().index, 7);
}

TEST_F(AsyncRolloutsTest, GroupsInFlightDuringAnUpdateFinishAndAreUsed) {
  Data(10);
  auto async = Make(Options(1, 1));
  ASSERT_TRUE(async->Take(1, 0, 5).ok());
  // p1 started at version 0 before Take returned; the learner moves to version 1 while it
  // may still be generating. It is not cancelled: it finishes and is taken.
  async->Publish(1);
  auto next = async->Take(1, /*learner_version=*/1, 4);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(Prompts(*next), (std::vector<std::string>{"p1"}));
  EXPECT_EQ((*next)[0].generation.weight_version, 0);
  EXPECT_EQ((*next)[0].generations, 1);
  EXPECT_EQ(async->stats().staleness_max, 1);
  EXPECT_EQ(async->stats().stale_requeued, 0);
  // p2 started after the update, so it asked for the new weights.
  auto third = async->Take(1, 1, 3);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ((*third)[0].generation.weight_version, 1);
}

TEST_F(AsyncRolloutsTest, TakeWaitsForGroupsStillGenerating) {
  Data(10);
  auto async = Make(Options(2, 1));
  source_.Hold();
  std::thread trainer([&] {
    auto taken = async->Take(2, 0, 0);
    EXPECT_TRUE(taken.ok());
    EXPECT_EQ(Prompts(*taken), (std::vector<std::string>{"p0", "p1"}));
  });
  // Take cannot return before the held call does.
  while (source_.calls().empty()) std::this_thread::yield();
  EXPECT_EQ(async->stats().groups_taken, 0);
  source_.Release();
  trainer.join();
  EXPECT_EQ(async->stats().groups_taken, 2);
}

TEST_F(AsyncRolloutsTest, StaleGroupsAreGeneratedAgainWithNewerWeights) {
  Data(10);
  auto async = Make(Options(2, 2));  // window: 4 groups
  ASSERT_TRUE(async->Take(2, 0, 10).ok());
  // p2..p5 were generated with version 0; the learner is now 5 versions on.
  async->Publish(5);
  auto taken = async->Take(2, /*learner_version=*/5, 8);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(Prompts(*taken), (std::vector<std::string>{"p2", "p3"}));
  for (const auto& g : *taken) {
    EXPECT_EQ(g.generation.weight_version, 5);
    EXPECT_EQ(g.generations, 2);
  }
  EXPECT_EQ(async->stats().stale_requeued, 2);
  EXPECT_EQ(async->stats().staleness_max, 0);
  // A regenerated group keeps its place: the cursor still moves in draw order.
  EXPECT_EQ(async->consumed_position().index, 4);
}

TEST_F(AsyncRolloutsTest, AGroupStaleEveryTimeFailsNamingIt) {
  Data(10);
  auto async = Make(Options(2, 1));
  // The learner claims version 9 but nothing newer than 0 was published.
  auto taken = async->Take(2, /*learner_version=*/9, 0);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kAborted);
  EXPECT_NE(taken.status().message().find("group p0: generated 3 times, each time too stale"),
            std::string::npos)
      << taken.status();
  EXPECT_EQ(async->stats().stale_requeued, 4);
}

TEST_F(AsyncRolloutsTest, AFailedGroupFailsTheTake) {
  Data(10);
  source_.fail_id_ = "p1";
  auto async = Make(Options(2, 1));
  auto taken = async->Take(2, 0, 4);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(taken.status().message().find("group p1"), std::string::npos);
}

TEST_F(AsyncRolloutsTest, AVersionOlderThanAskedIsAnError) {
  Data(10);
  source_.version_of_ = [](int64_t min_version) { return min_version - 1; };
  auto async = Make(Options(2, 1), {}, /*published=*/3);
  auto taken = async->Take(2, 3, 0);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(taken.status().message().find("older than the 3 it was asked for"), std::string::npos)
      << taken.status();
}

class ScoringTest : public AsyncRolloutsTest {
 public:
  // A reward server on loopback taking 250 ms per item, its items one at a time per call;
  // the rollouts score through the reward router with `concurrency` scoring threads.
  // Returns the rewards taken over `steps` steps of 4 groups, in the order taken.
  std::vector<double> Run(int64_t concurrency, int steps, std::shared_ptr<ServerLoad> load) {
    RewardServerOptions so;
    so.num_scoring_threads = 8;
    so.max_parallel_items = 1;
    auto server = RewardServer::Start(
        so, std::make_unique<SlowReward>(load, std::chrono::milliseconds(250)));
    EXPECT_TRUE(server.ok()) << server.status();
    RewardRouterOptions ro;
    RewardRouterEntry e;
    e.name = "slow";
    e.address = (*server)->address();
    ro.entries.push_back(e);
    ro.max_concurrent_calls_per_entry = 8;
    auto router = RewardRouter::Create(ro);
    EXPECT_TRUE(router.ok()) << router.status();
    AsyncRolloutOptions o = Options(/*pps=*/4, /*max_staleness=*/1);
    o.max_concurrent_scoring = concurrency;
    auto async = Make(o, {}, 0, ScoreWith(router->get()));
    std::vector<double> rewards;
    for (int step = 0; step < steps; ++step) {
      auto taken = async->Take(4, step, 4 * (steps - step - 1));
      EXPECT_TRUE(taken.ok()) << taken.status();
      if (!taken.ok()) return {};
      for (const AsyncGroup& g : *taken) {
        EXPECT_TRUE(g.scored);
        EXPECT_EQ(g.scores.rewards.size(), g.generation.samples.size());
        for (size_t k = 0; k < g.scores.rewards.size(); ++k) {
          EXPECT_EQ(g.scores.texts[k], SampleInput(*g.example, k).response);
          rewards.push_back(g.scores.rewards[k].score);
        }
      }
      if (step + 1 == steps) break;
      // The next step's groups are generated and scored while this thread, the trainer,
      // calls nothing: scoring is off its path.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
      while (true) {
        const AsyncRolloutStats s = async->stats();
        if (s.ready_ahead == 4 && s.scoring == 0 && s.in_flight == 0) break;
        EXPECT_LT(std::chrono::steady_clock::now(), deadline) << "the groups ahead were not scored";
        if (std::chrono::steady_clock::now() >= deadline) return {};
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      async->Publish(step + 1);
    }
    return rewards;
  }
};

TEST_F(ScoringTest, GroupsAreScoredConcurrentlyAheadOfTheTakeWithTheRewardsOfSerialScoring) {
  Data(12);
  auto overlapped = std::make_shared<ServerLoad>();
  const std::vector<double> concurrent = Run(/*concurrency=*/4, /*steps=*/3, overlapped);
  ASSERT_EQ(concurrent.size(), 24u);
  // The server scored items of several groups at once (each call's items one by one).
  EXPECT_GE(overlapped->max_groups_at_once, 2u);
  EXPECT_EQ(overlapped->items, 24);

  auto one_by_one = std::make_shared<ServerLoad>();
  const std::vector<double> serial = Run(/*concurrency=*/1, /*steps=*/3, one_by_one);
  EXPECT_EQ(one_by_one->max_groups_at_once, 1u);
  // The same rewards in the same order: what the trainer sees does not depend on it.
  EXPECT_EQ(concurrent, serial);
  std::vector<double> expected;
  for (int p = 0; p < 12; ++p) {
    for (int k = 0; k < 2; ++k) expected.push_back(SlowReward::Expected(absl::StrCat("p", p, "#", k)));
  }
  EXPECT_EQ(concurrent, expected);
}

TEST_F(AsyncRolloutsTest, AGroupIsScoredWhileAnotherGroupOfItsCallStillGenerates) {
  Data(4);
  ThreadedSource source(/*held=*/"p1");
  auto arrivals = std::make_shared<Arrivals>();
  RewardServerOptions so;
  so.num_scoring_threads = 2;
  auto server = RewardServer::Start(so, std::make_unique<ArrivalReward>(arrivals, &source));
  ASSERT_TRUE(server.ok()) << server.status();
  RewardRouterOptions ro;
  RewardRouterEntry e;
  e.name = "arrival";
  e.address = (*server)->address();
  ro.entries.push_back(e);
  auto router = RewardRouter::Create(ro);
  ASSERT_TRUE(router.ok()) << router.status();

  AsyncRolloutOptions o = Options(/*pps=*/2, /*max_staleness=*/1);
  o.max_concurrent_scoring = 2;
  auto make_request = [](const Example& ex, uint64_t seed) -> absl::StatusOr<GenerationRequest> {
    GenerationRequest r;
    r.id = ex.prompt;
    r.prompt = {1, 2, 3};
    r.params.n = 2;
    r.params.seed = seed;
    return r;
  };
  auto generate = [&source](const std::vector<GenerationRequest>& reqs, int64_t min_version,
                            const GroupCallback& on_group) {
    source.GenerateEach(reqs, min_version, on_group);
  };
  AsyncRollouts async(o, &*data_, {}, 0, make_request, generate, ScoreWith(router->get()));
  absl::StatusOr<std::vector<AsyncGroup>> taken;
  std::thread trainer([&] { taken = async.Take(2, 0, 0); });
  // p0 and p1 are one generation call; p1 is held, yet p0's samples reach the reward
  // server. (Were groups scored only once their whole call returned, none would arrive.)
  const bool p0_scored = arrivals->WaitFor("p0", 2, std::chrono::seconds(60));
  EXPECT_TRUE(p0_scored) << "group p0 was not scored while p1 of its call was generating";
  const AsyncRolloutStats held = async.stats();
  source.Open();
  trainer.join();
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(source.calls(), (std::vector<std::vector<std::string>>{{"p0", "p1"}}));
  if (p0_scored) EXPECT_EQ(held.in_flight, 1);  // p1, still generating
  std::vector<std::pair<std::string, bool>> items;
  {
    std::lock_guard<std::mutex> lock(arrivals->mu);
    items = arrivals->items;
  }
  ASSERT_EQ(items.size(), 4u);
  for (const auto& [prompt, open] : items) {
    // p0 is scored before p1 is released; p1 only after.
    EXPECT_EQ(open, prompt == "p1") << prompt;
  }
  // The order and the rewards are those of the draw, whatever finished first.
  ASSERT_EQ(Prompts(*taken), (std::vector<std::string>{"p0", "p1"}));
  for (const AsyncGroup& g : *taken) {
    ASSERT_TRUE(g.scored);
    ASSERT_EQ(g.scores.rewards.size(), 2u);
    for (size_t k = 0; k < 2; ++k) {
      EXPECT_EQ(g.scores.texts[k], SampleInput(*g.example, k).response);
      EXPECT_EQ(g.scores.rewards[k].score, static_cast<double>(SampleInput(*g.example, k).response.size()));
    }
  }
}

TEST_F(AsyncRolloutsTest, TheDefaultGenerateEachHandsOverEveryGroupOfGenerate) {
  // A source with only Generate: each group handed over once, in request order.
  class Plain final : public RolloutSource {
   public:
    std::vector<GroupGeneration> Generate(const std::vector<GenerationRequest>& reqs,
                                          int64_t min_version) override {
      std::vector<GroupGeneration> out(reqs.size() - 1);  // one short
      for (size_t i = 0; i < out.size(); ++i) out[i].weight_version = min_version + static_cast<int64_t>(i);
      return out;
    }
    absl::Status PublishWeights(int64_t) override { return absl::OkStatus(); }
    std::vector<std::pair<std::string, double>> Stats() const override { return {}; }
  } plain;
  std::vector<GenerationRequest> reqs(3);
  reqs[0].id = "a";
  reqs[1].id = "b";
  reqs[2].id = "c";
  std::vector<std::pair<size_t, GroupGeneration>> got;
  plain.GenerateEach(reqs, 5, [&got](size_t i, GroupGeneration g) { got.emplace_back(i, std::move(g)); });
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0].first, 0u);
  EXPECT_EQ(got[0].second.weight_version, 5);
  EXPECT_EQ(got[1].first, 1u);
  EXPECT_EQ(got[1].second.weight_version, 6);
  EXPECT_EQ(got[2].first, 2u);
  EXPECT_EQ(got[2].second.status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(got[2].second.status.message().find("group c: the rollout source returned 2 results for 3 requests"),
            std::string::npos)
      << got[2].second.status;
}

TEST_F(AsyncRolloutsTest, AGroupThatFailsToScoreFailsTheTakeNamingIt) {
  Data(10);
  AsyncScoreFn score = [](const Example& ex, const GenerationRequest&,
                          const GroupGeneration& g) -> absl::StatusOr<GroupScores> {
    if (ex.prompt == "p1") return absl::UnavailableError("reward server 127.0.0.1:9 is down");
    GroupScores out;
    for (size_t k = 0; k < g.samples.size(); ++k) {
      out.texts.push_back(SampleInput(ex, k).response);
      out.rewards.push_back(RewardResult{1.0, {}});
    }
    return out;
  };
  auto async = Make(Options(2, 1), {}, 0, score);
  auto taken = async->Take(2, 0, 4);
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(taken.status().message().find("group p1: scoring failed: reward server 127.0.0.1:9 is down"),
            std::string::npos)
      << taken.status();
}

TEST_F(AsyncRolloutsTest, AScoreOfTheWrongSizeFailsTheTake) {
  Data(10);
  AsyncScoreFn score = [](const Example&, const GenerationRequest&,
                          const GroupGeneration&) -> absl::StatusOr<GroupScores> {
    GroupScores out;
    out.texts = {"one"};
    out.rewards = {RewardResult{}};
    return out;
  };
  auto async = Make(Options(2, 1), {}, 0, score);
  auto taken = async->Take(2, 0, 0);
  ASSERT_FALSE(taken.ok());
  EXPECT_NE(taken.status().message().find("group p0: scoring failed: scoring returned 1 rewards and 1 texts for 2 samples"),
            std::string::npos)
      << taken.status();
}

TEST_F(AsyncRolloutsTest, OptionsNeedAStepOfStaleness) {
  AsyncRolloutOptions o = Options(4, 1);
  o.versions_per_step = 2;
  EXPECT_FALSE(o.Validate().ok());
  EXPECT_NE(o.Validate().message().find("max_staleness must be >= versions_per_step (2)"),
            std::string::npos);
  o.max_staleness = 5;
  ASSERT_TRUE(o.Validate().ok());
  EXPECT_EQ(o.window(), 8);  // two steps of 4 groups
}

}  // namespace
}  // namespace lightrl
