// The rollout worker's core without gRPC: groups submitted together run as one engine
// batch and generate what the in-process engine generates, a weight swap waits for the
// running batch so no group mixes versions, and the queue's bounds and shutdown deliver
// every queued group exactly once. A real tiny model on the CPU engine throughout.
#include "rollout/rollout_worker_core.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

ModelConfig TinyConfig() { return TinyRolloutConfig(4096); }

std::unique_ptr<PolicyModel> TinyPolicy(uint64_t seed) {
  auto policy = PolicyModel::Create(TinyConfig(), seed);
  EXPECT_TRUE(policy.ok()) << policy.status();
  return *std::move(policy);
}

WeightSet Export(const PolicyModel& policy, int64_t version) {
  WeightSet set;
  set.version = version;
  set.dtype = DType::kF32;
  set.model_config_json = policy.config().ToJson().Dump();
  auto tensors = policy.ExportWeights(DType::kF32);
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  set.tensors = *std::move(tensors);
  return set;
}

GenerationRequest RandomRequest(std::mt19937& rng, const std::string& id, int max_new_tokens) {
  GenerationRequest r;
  r.id = id;
  const int len = 1 + static_cast<int>(rng() % 9);
  for (int t = 0; t < len; ++t) r.prompt.push_back(static_cast<int32_t>(rng() % 61));
  r.params.temperature = rng() % 2 == 0 ? 0.0 : 1.0;
  r.params.n = 1 + static_cast<int>(rng() % 3);
  r.params.max_new_tokens = max_new_tokens;
  r.params.seed = rng();
  return r;
}

// What a group's delivery carried, and the order deliveries came in.
struct Delivered {
  absl::Status status;
  int64_t version = -2;
  std::vector<GeneratedSample> samples;
  int order = -1;
  int calls = 0;
};

class Deliveries {
 public:
  RolloutWorkerCore::DeliverFn For(const std::string& id, std::atomic<int>* clock,
                                   absl::BlockingCounter* done) {
    return [this, id, clock, done](absl::Status s, int64_t v, std::vector<GeneratedSample> samples) {
      {
        absl::MutexLock lock(&mu_);
        Delivered& d = by_id_[id];
        d.status = std::move(s);
        d.version = v;
        d.samples = std::move(samples);
        d.order = clock->fetch_add(1);
        ++d.calls;
      }
      done->DecrementCount();
    };
  }
  Delivered Get(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return by_id_[id];
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, Delivered> by_id_;
};

void ExpectSameSamples(const std::vector<GeneratedSample>& got, const GenerationResult& want,
                       const std::string& what) {
  ASSERT_TRUE(want.status.ok()) << what << ": " << want.status;
  ASSERT_EQ(got.size(), want.samples.size()) << what;
  for (size_t k = 0; k < got.size(); ++k) {
    EXPECT_EQ(got[k].tokens, want.samples[k].tokens) << what << " sample " << k;
    ASSERT_EQ(got[k].logprobs.size(), want.samples[k].logprobs.size()) << what;
    for (size_t t = 0; t < got[k].logprobs.size(); ++t) {
      EXPECT_NEAR(got[k].logprobs[t], want.samples[k].logprobs[t], 1e-4) << what;
    }
    EXPECT_EQ(got[k].finish_reason, want.samples[k].finish_reason) << what;
  }
}

TEST(RolloutWorkerCoreTest, GroupsSubmittedTogetherRunAsOneBatchAndMatchTheEngine) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed = rng();
  RolloutWorkerCoreOptions options;
  // Every group below joins one batch: the window restarts while groups keep arriving,
  // and is long enough for a loaded machine to submit six.
  options.batch_window = absl::Seconds(2);
  auto core = RolloutWorkerCore::Create(options, TinyPolicy(seed), /*version=*/5);
  ASSERT_TRUE(core.ok()) << core.status();
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 6; ++i) requests.push_back(RandomRequest(rng, "g" + std::to_string(i), 3 + i));

  Deliveries deliveries;
  std::atomic<int> clock{0};
  absl::BlockingCounter done(static_cast<int>(requests.size()));
  for (const GenerationRequest& r : requests) {
    ASSERT_TRUE((*core)->Submit(r, /*min_weight_version=*/5, deliveries.For(r.id, &clock, &done)).ok());
  }
  done.Wait();
  // The counters move once the batch has delivered every group.
  RolloutWorkerCoreStats stats = (*core)->stats();
  for (const absl::Time deadline = absl::Now() + absl::Seconds(30);
       stats.engine_batches == 0 && absl::Now() < deadline; stats = (*core)->stats()) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(stats.engine_batches, 1);
  EXPECT_EQ(stats.queued_groups, 0);
  EXPECT_EQ(stats.active_groups, 0);
  EXPECT_TRUE(stats.serving);

  std::unique_ptr<PolicyModel> reference = TinyPolicy(seed);
  auto engine = Engine::Create(reference.get(), EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<GenerationResult> local = (*engine)->Generate(requests);
  int64_t tokens = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const Delivered d = deliveries.Get(requests[i].id);
    EXPECT_EQ(d.calls, 1) << requests[i].id;
    ASSERT_TRUE(d.status.ok()) << requests[i].id << ": " << d.status;
    EXPECT_EQ(d.version, 5);
    ExpectSameSamples(d.samples, local[i], requests[i].id);
    for (const GeneratedSample& s : d.samples) tokens += static_cast<int64_t>(s.tokens.size());
  }
  EXPECT_EQ(stats.generated_tokens, tokens);
}

TEST(RolloutWorkerCoreTest, AWeightSwapWaitsForTheRunningBatchSoNoGroupMixesVersions) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed_v1 = rng(), seed_v2 = rng();
  RolloutWorkerCoreOptions options;
  options.batch_window = absl::ZeroDuration();
  // No weights yet: groups are refused until the first set, which carries the model.
  auto core = RolloutWorkerCore::Create(options);
  ASSERT_TRUE(core.ok()) << core.status();
  Deliveries deliveries;
  std::atomic<int> clock{0};
  absl::BlockingCounter never(1);
  absl::Status early = (*core)->Submit(RandomRequest(rng, "early", 4), 0,
                                       deliveries.For("early", &clock, &never));
  EXPECT_EQ(early.code(), absl::StatusCode::kFailedPrecondition) << early;
  EXPECT_FALSE((*core)->stats().serving);
  std::unique_ptr<PolicyModel> v1 = TinyPolicy(seed_v1), v2 = TinyPolicy(seed_v2);
  ASSERT_TRUE((*core)->ApplyWeights(Export(*v1, 1), false).ok());
  EXPECT_EQ((*core)->version(), 1);
  EXPECT_FALSE((*core)->weight_specs().empty());

  // A long greedy group starts on version 1; version 2 arrives while it runs.
  GenerationRequest long_group = RandomRequest(rng, "long", 600);
  long_group.params.temperature = 0.0;
  long_group.params.n = 4;
  absl::BlockingCounter long_done(1);
  ASSERT_TRUE((*core)->Submit(long_group, 1, deliveries.For("long", &clock, &long_done)).ok());
  while ((*core)->stats().active_groups == 0) absl::SleepFor(absl::Milliseconds(1));
  // Newer than what is served: refused at once, never delivered.
  absl::Status too_new = (*core)->Submit(RandomRequest(rng, "too-new", 4), 2,
                                         deliveries.For("too-new", &clock, &never));
  EXPECT_EQ(too_new.code(), absl::StatusCode::kFailedPrecondition) << too_new;
  EXPECT_TRUE(absl::StrContains(too_new.message(), "min_weight_version 2")) << too_new;
  ASSERT_TRUE((*core)->ApplyWeights(Export(*v2, 2), false).ok());
  const int swapped_at = clock.fetch_add(1);
  long_done.Wait();
  const Delivered long_result = deliveries.Get("long");
  ASSERT_TRUE(long_result.status.ok()) << long_result.status;
  EXPECT_EQ(long_result.version, 1);
  EXPECT_LT(long_result.order, swapped_at) << "the swap returned before the running batch ended";
  EXPECT_EQ((*core)->version(), 2);

  // Each group's samples are those of the version it reports.
  auto engine_v1 = Engine::Create(v1.get(), EngineOptions{});
  auto engine_v2 = Engine::Create(v2.get(), EngineOptions{});
  ASSERT_TRUE(engine_v1.ok() && engine_v2.ok());
  ExpectSameSamples(long_result.samples, (*engine_v1)->Generate({long_group})[0], "long on v1");
  GenerationRequest after = RandomRequest(rng, "after", 6);
  absl::BlockingCounter after_done(1);
  ASSERT_TRUE((*core)->Submit(after, 2, deliveries.For("after", &clock, &after_done)).ok());
  after_done.Wait();
  const Delivered after_result = deliveries.Get("after");
  ASSERT_TRUE(after_result.status.ok()) << after_result.status;
  EXPECT_EQ(after_result.version, 2);
  ExpectSameSamples(after_result.samples, (*engine_v2)->Generate({after})[0], "after on v2");

  // Stale and foreign sets change nothing.
  EXPECT_EQ((*core)->ApplyWeights(Export(*v1, 2), false).code(), absl::StatusCode::kFailedPrecondition);
  ModelConfig other = TinyConfig();
  other.hidden_size = 48;
  auto foreign = PolicyModel::Create(other, seed_v1);
  ASSERT_TRUE(foreign.ok());
  EXPECT_EQ((*core)->ApplyWeights(Export(**foreign, 9), false).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*core)->version(), 2);
}

TEST(RolloutWorkerCoreTest, AGroupQueuedBeforeARollbackFailsAloneNamingItsVersion) {
  std::mt19937 rng(std::random_device{}());
  std::unique_ptr<PolicyModel> v1 = TinyPolicy(rng());
  RolloutWorkerCoreOptions options;
  options.batch_window = absl::Milliseconds(400);
  auto core = RolloutWorkerCore::Create(options, TinyPolicy(rng()), /*version=*/2);
  ASSERT_TRUE(core.ok()) << core.status();
  Deliveries deliveries;
  std::atomic<int> clock{0};
  absl::BlockingCounter done(2);
  ASSERT_TRUE((*core)->Submit(RandomRequest(rng, "needs-2", 4), 2,
                              deliveries.For("needs-2", &clock, &done)).ok());
  ASSERT_TRUE((*core)->Submit(RandomRequest(rng, "any", 4), 0, deliveries.For("any", &clock, &done)).ok());
  // A resumed controller goes back to version 1 while both wait for the batch window.
  ASSERT_TRUE((*core)->ApplyWeights(Export(*v1, 1), /*replace_newer=*/true).ok());
  done.Wait();
  const Delivered refused = deliveries.Get("needs-2");
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kFailedPrecondition) << refused.status;
  EXPECT_TRUE(absl::StrContains(refused.status.message(), "needs-2")) << refused.status;
  EXPECT_TRUE(refused.samples.empty());
  const Delivered served = deliveries.Get("any");
  ASSERT_TRUE(served.status.ok()) << served.status;
  EXPECT_EQ(served.version, 1);
  EXPECT_FALSE(served.samples.empty());
}

TEST(RolloutWorkerCoreTest, TheQueueIsBoundedAndShutdownFailsWhatWaitsExactlyOnce) {
  std::mt19937 rng(std::random_device{}());
  RolloutWorkerCoreOptions options;
  options.max_queued_groups = 2;
  options.batch_window = absl::Seconds(30);  // nothing leaves the queue before Shutdown
  auto core = RolloutWorkerCore::Create(options, TinyPolicy(rng()), 0);
  ASSERT_TRUE(core.ok()) << core.status();
  Deliveries deliveries;
  std::atomic<int> clock{0};
  absl::BlockingCounter done(2), never(1);
  ASSERT_TRUE((*core)->Submit(RandomRequest(rng, "a", 4), 0, deliveries.For("a", &clock, &done)).ok());
  ASSERT_TRUE((*core)->Submit(RandomRequest(rng, "b", 4), 0, deliveries.For("b", &clock, &done)).ok());
  absl::Status full = (*core)->Submit(RandomRequest(rng, "c", 4), 0, deliveries.For("c", &clock, &never));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  // Bad groups are refused with their id before they queue.
  GenerationRequest bad_token = RandomRequest(rng, "bad-token", 4);
  bad_token.prompt.push_back(61);
  EXPECT_EQ((*core)->Submit(bad_token, 0, deliveries.For("bad-token", &clock, &never)).code(),
            absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_top_p = RandomRequest(rng, "bad-top-p", 4);
  bad_top_p.params.top_p = 0;
  absl::Status sampling = (*core)->Submit(bad_top_p, 0, deliveries.For("bad-top-p", &clock, &never));
  EXPECT_EQ(sampling.code(), absl::StatusCode::kInvalidArgument) << sampling;
  EXPECT_TRUE(absl::StrContains(sampling.message(), "bad-top-p: sampling.")) << sampling;
  GenerationRequest stop = RandomRequest(rng, "stop", 4);
  stop.params.stop_strings = {"x"};
  EXPECT_EQ((*core)->Submit(stop, 0, deliveries.For("stop", &clock, &never)).code(),
            absl::StatusCode::kInvalidArgument);

  (*core)->Shutdown();
  done.Wait();
  for (const char* id : {"a", "b"}) {
    const Delivered d = deliveries.Get(id);
    EXPECT_EQ(d.calls, 1) << id;
    EXPECT_EQ(d.status.code(), absl::StatusCode::kUnavailable) << id << ": " << d.status;
  }
  EXPECT_EQ(deliveries.Get("c").calls, 0);
  EXPECT_EQ((*core)->stats().engine_batches, 0);
  EXPECT_FALSE((*core)->stats().serving);
  EXPECT_EQ((*core)->Submit(RandomRequest(rng, "late", 4), 0, deliveries.For("late", &clock, &never)).code(),
            absl::StatusCode::kUnavailable);
  (*core)->Shutdown();  // idempotent
  EXPECT_EQ(deliveries.Get("a").calls, 1);
}

TEST(RolloutWorkerCoreTest, OptionsAreValidated) {
  RolloutWorkerCoreOptions options;
  options.max_queued_groups = 0;
  EXPECT_EQ(RolloutWorkerCore::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = RolloutWorkerCoreOptions();
  options.batch_window = absl::Milliseconds(-1);
  EXPECT_EQ(RolloutWorkerCore::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = RolloutWorkerCoreOptions();
  options.max_weight_bytes = -1;
  EXPECT_EQ(RolloutWorkerCore::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = RolloutWorkerCoreOptions();
  EXPECT_GT((*RolloutWorkerCore::Create(options))->weight_budget(), 0);
  options.max_weight_bytes = 12345;
  EXPECT_EQ((*RolloutWorkerCore::Create(options))->weight_budget(), 12345);
}

}  // namespace
}  // namespace lightrl
