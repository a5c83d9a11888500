// The rollout fleet hands each group over the moment its worker answers, not when the
// whole Generate call is done: a worker on real gRPC on loopback holds one group behind a
// latch, and the latch opens only from the callback of another group of the same call.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "lightrl/v1/rollout.grpc.pb.h"
#include "policy/model_config.h"
#include "proto/grpc_util.h"
#include "rollout/rollout_client.h"

namespace lightrl {
namespace {

// A rollout worker that takes weights like a real one and answers Generate with n
// one-token samples (refusing the group named "bad" as bad input); the group named `held` is answered only once the latch opens (or,
// so a broken fleet fails the test instead of hanging it, after 20 s, as an error).
class GatedWorker final : public lightrl::v1::RolloutService::Service {
 public:
  explicit GatedWorker(std::string held) : held_(std::move(held)) {}

  grpc::Status Generate(grpc::ServerContext*, const lightrl::v1::GenerateRequest* request,
                        grpc::ServerWriter<lightrl::v1::GenerateResponse>* writer) override {
    if (request->group_id() == "bad") {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "group bad: an empty prompt");
    }
    if (request->group_id() == held_) {
      std::unique_lock<std::mutex> lock(mu_);
      if (!changed_.wait_for(lock, std::chrono::seconds(20), [&] { return open_; })) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the latch never opened");
      }
    }
    for (int64_t i = 0; i < request->sampling().n(); ++i) {
      lightrl::v1::GenerateResponse response;
      response.set_group_id(request->group_id());
      response.set_weight_version(version_);
      auto* sample = response.mutable_sample();
      sample->set_index(static_cast<int32_t>(i));
      sample->set_finish_reason("length");
      sample->add_tokens(static_cast<int32_t>(1 + i));
      sample->add_logprobs(-0.5f);
      writer->Write(response);
    }
    return grpc::Status::OK;
  }
  grpc::Status UpdateWeights(grpc::ServerContext*, grpc::ServerReader<lightrl::v1::WeightChunk>* reader,
                             lightrl::v1::UpdateWeightsResponse* response) override {
    lightrl::v1::WeightChunk chunk;
    while (reader->Read(&chunk)) {
      if (chunk.has_header()) version_ = chunk.header().version();
    }
    response->set_weight_version(version_);
    return grpc::Status::OK;
  }
  grpc::Status Health(grpc::ServerContext*, const lightrl::v1::RolloutHealthRequest*,
                      lightrl::v1::RolloutHealthResponse* response) override {
    response->set_serving(version_ >= 0);
    response->set_weight_version(version_);
    return grpc::Status::OK;
  }

  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    changed_.notify_all();
  }
  bool open() {
    std::lock_guard<std::mutex> lock(mu_);
    return open_;
  }

 private:
  const std::string held_;
  std::mutex mu_;
  std::condition_variable changed_;
  bool open_ = false;
  std::atomic<int64_t> version_{-1};
};

WeightSet TinyWeights(int64_t version) {
  ModelConfig c;
  c.vocab_size = 61;
  WeightSet set;
  set.version = version;
  set.model_config_json = c.ToJson().Dump();
  return set;
}

TEST(FleetPerGroupTest, EachGroupIsHandedOverWhenItsWorkerAnswers) {
  GatedWorker worker(/*held=*/"held");
  int port = 0;
  auto server = StartGrpcServer("127.0.0.1:0", &worker, &port);
  ASSERT_TRUE(server.ok()) << server.status();
  RolloutFleetHooks hooks;
  hooks.list_workers = [port] {
    return std::vector<WorkerEndpoint>{{"gated", "127.0.0.1:" + std::to_string(port), 4}};
  };
  hooks.on_worker_failed = [](const std::string&) {};
  RolloutFleetOptions o;
  o.rpc_deadline = absl::Seconds(30);
  o.generate_deadline = absl::Seconds(30);
  auto fleet = RolloutFleet::Create(o, hooks);
  ASSERT_TRUE(fleet.ok()) << fleet.status();
  ASSERT_TRUE((*fleet)->PublishWeights(TinyWeights(3)).ok());

  std::vector<GenerationRequest> requests(3);
  const std::vector<std::string> ids = {"held", "quick", "also-quick"};
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].id = ids[i];
    requests[i].prompt = {1, 2};
    requests[i].params.n = 2;
    requests[i].params.max_new_tokens = 4;
  }
  struct Handed {
    size_t index;
    GroupOutcome outcome;
    bool latch_open;  // when it was handed over
  };
  std::mutex mu;
  std::vector<Handed> handed;
  int quick_seen = 0;
  (*fleet)->Generate(requests, 3, [&](size_t index, GroupOutcome outcome) {
    const bool open = worker.open();
    std::lock_guard<std::mutex> lock(mu);
    handed.push_back({index, std::move(outcome), open});
    // The held group is let go only once both others were handed over: were groups
    // handed over at the end of the call, it never would be.
    if (index != 0 && ++quick_seen == 2) worker.Open();
  });
  ASSERT_EQ(handed.size(), 3u);
  EXPECT_EQ(handed[2].index, 0u);
  EXPECT_TRUE(handed[2].latch_open);
  for (const Handed& h : handed) {
    EXPECT_EQ(h.latch_open, h.index == 0) << h.index;
    ASSERT_TRUE(h.outcome.status.ok()) << ids[h.index] << ": " << h.outcome.status;
    EXPECT_EQ(h.outcome.output.weight_version, 3);
    ASSERT_EQ(h.outcome.output.samples.size(), 2u);
    EXPECT_EQ(h.outcome.output.samples[1].tokens, (std::vector<int32_t>{2}));
  }

  // Without a callback the same call returns every outcome, in request order.
  std::vector<GroupOutcome> outcomes = (*fleet)->Generate(requests, 3);
  ASSERT_EQ(outcomes.size(), 3u);
  for (const GroupOutcome& out : outcomes) {
    ASSERT_TRUE(out.status.ok()) << out.status;
    EXPECT_EQ(out.output.samples.size(), 2u);
  }
}

// A group the worker refuses as bad input is handed over with its error, once, like the
// others.
TEST(FleetPerGroupTest, AFailedGroupIsHandedOverWithItsError) {
  GatedWorker worker(/*held=*/"held");
  worker.Open();
  int port = 0;
  auto server = StartGrpcServer("127.0.0.1:0", &worker, &port);
  ASSERT_TRUE(server.ok()) << server.status();
  RolloutFleetHooks hooks;
  hooks.list_workers = [port] {
    return std::vector<WorkerEndpoint>{{"gated", "127.0.0.1:" + std::to_string(port), 4}};
  };
  hooks.on_worker_failed = [](const std::string&) {};
  auto fleet = RolloutFleet::Create(RolloutFleetOptions{}, hooks);
  ASSERT_TRUE(fleet.ok()) << fleet.status();
  ASSERT_TRUE((*fleet)->PublishWeights(TinyWeights(1)).ok());
  std::vector<GenerationRequest> requests(2);
  requests[0].id = "fine";
  requests[1].id = "bad";
  for (auto& r : requests) {
    r.prompt = {1};
    r.params.n = 2;
    r.params.max_new_tokens = 4;
  }
  std::mutex mu;
  std::vector<std::pair<size_t, absl::Status>> handed;
  (*fleet)->Generate(requests, 1, [&](size_t index, GroupOutcome outcome) {
    std::lock_guard<std::mutex> lock(mu);
    handed.emplace_back(index, outcome.status);
  });
  ASSERT_EQ(handed.size(), 2u);
  std::sort(handed.begin(), handed.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  EXPECT_EQ(handed[0].first, 0u);
  EXPECT_TRUE(handed[0].second.ok()) << handed[0].second;
  EXPECT_EQ(handed[1].first, 1u);
  EXPECT_EQ(handed[1].second.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(handed[1].second.message()).find("group bad: an empty prompt"),
            std::string::npos)
      << handed[1].second;
}

}  // namespace
}  // namespace lightrl
