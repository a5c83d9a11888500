// The rollout worker and fleet over real gRPC on loopback: weights pushed in chunks,
// generation equal to the in-process engine's, bad wire input refused while the worker
// keeps serving, and groups of a dead worker requeued on the live ones.
#include "rollout/rollout_worker.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "lightrl/v1/rollout.grpc.pb.h"
#include "proto/grpc_util.h"
#include "rollout/rollout_client.h"
#include "tests/raw_grpc_call.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

ModelConfig TinyConfig() { return TinyRolloutConfig(256); }

WeightSet Export(const PolicyModel& policy, int64_t version, DType dtype = DType::kF32) {
  WeightSet set;
  set.version = version;
  set.dtype = dtype;
  set.model_config_json = policy.config().ToJson().Dump();
  auto tensors = policy.ExportWeights(dtype);
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  set.tensors = *std::move(tensors);
  return set;
}

std::vector<GenerationRequest> RandomRequests(std::mt19937& rng, int count) {
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < count; ++i) {
    GenerationRequest r;
    r.id = "g" + std::to_string(i);
    const int len = 1 + static_cast<int>(rng() % 9);
    for (int t = 0; t < len; ++t) r.prompt.push_back(static_cast<int32_t>(rng() % 61));
    r.params.temperature = i % 2 == 0 ? 0.0 : 1.0;
    r.params.n = 1 + static_cast<int>(rng() % 3);
    r.params.max_new_tokens = 3 + static_cast<int>(rng() % 6);
    r.params.seed = rng();
    reqs.push_back(std::move(r));
  }
  return reqs;
}

std::unique_ptr<RolloutClient> Connect(const std::string& address) {
  RolloutClientOptions o;
  o.address = address;
  o.rpc_deadline = absl::Seconds(30);
  o.generate_deadline = absl::Seconds(60);
  auto c = RolloutClient::Create(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return *std::move(c);
}

// Worker "w0" on loopback, serving nothing yet, and a client of it.
struct LoopbackWorker {
  std::unique_ptr<RolloutWorker> worker;
  std::unique_ptr<RolloutClient> client;
};

LoopbackWorker StartLoopbackWorker() {
  RolloutWorkerOptions wopts;
  wopts.worker_id = "w0";
  auto worker = RolloutWorker::Start(wopts);
  EXPECT_TRUE(worker.ok()) << worker.status();
  if (!worker.ok()) return {};
  auto client = Connect((*worker)->address());
  return {*std::move(worker), std::move(client)};
}

// A request over the worker's message limit is refused by gRPC with RESOURCE_EXHAUSTED;
// the worker goes on serving.
TEST(RolloutWorkerTest, OversizedRequestIsRefusedAndTheWorkerGoesOn) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok()) << policy.status();
  RolloutWorkerOptions wopts;
  wopts.max_message_bytes = 8 << 20;
  auto worker = RolloutWorker::Start(wopts, *std::move(policy), /*version=*/1);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto client = Connect((*worker)->address());
  auto requests = RandomRequests(rng, 1);
  GenerationRequest huge = requests[0];
  // 3.5M ids of 3 varint bytes each: about 10 MB on the wire.
  huge.prompt.assign(3500000, 1 << 20);
  auto refused = client->Generate(huge, 0);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "8388608")) << refused.status();
  auto fine = client->Generate(requests[0], 0);
  ASSERT_TRUE(fine.ok()) << fine.status();
  EXPECT_EQ(fine->weight_version, 1);
  RolloutWorkerOptions too_small;
  too_small.max_message_bytes = 1 << 20;
  EXPECT_EQ(RolloutWorker::Start(too_small).status().code(), absl::StatusCode::kInvalidArgument);
  // Sized to a prompt and a 4 MiB weight chunk, not to what protobuf could carry.
  EXPECT_EQ(RolloutWorkerOptions().max_message_bytes, 64 << 20);
}

TEST(RolloutWorkerTest, MalformedBytesAreInvalidArgumentNamingTheTypeAndTheWorkerGoesOn) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok()) << policy.status();
  auto worker = RolloutWorker::Start(RolloutWorkerOptions(), *std::move(policy), /*version=*/1);
  ASSERT_TRUE(worker.ok()) << worker.status();
  const std::string address = (*worker)->address();
  const std::pair<std::string, std::string> methods[] = {
      {"/lightrl.v1.RolloutService/Generate", "lightrl.v1.GenerateRequest"},
      {"/lightrl.v1.RolloutService/UpdateWeights", "lightrl.v1.WeightChunk"},
      {"/lightrl.v1.RolloutService/Health", "lightrl.v1.RolloutHealthRequest"},
      {"/lightrl.v1.RolloutService/JoinWeightGroup", "lightrl.v1.JoinWeightGroupRequest"},
      {"/lightrl.v1.RolloutService/ReceiveWeights", "lightrl.v1.ReceiveWeightsRequest"}};
  for (const auto& [method, type] : methods) {
    const grpc::Status status = RawCall(address, method, MalformedProtobufBytes());
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_TRUE(absl::StrContains(status.error_message(), "malformed " + type))
        << method << ": " << status.error_message();
  }
  // A valid Generate through the raw path: one serialized GenerateResponse comes back.
  lightrl::v1::GenerateRequest request;
  request.set_group_id("raw");
  request.add_prompt_tokens(1);
  request.add_prompt_tokens(2);
  request.mutable_sampling()->set_n(1);
  request.mutable_sampling()->set_top_p(1.0);
  request.mutable_sampling()->set_max_new_tokens(3);
  std::string reply;
  const grpc::Status raw_ok =
      RawCall(address, "/lightrl.v1.RolloutService/Generate", request.SerializeAsString(), &reply);
  ASSERT_TRUE(raw_ok.ok()) << raw_ok.error_message();
  lightrl::v1::GenerateResponse response;
  ASSERT_TRUE(response.ParseFromString(reply));
  EXPECT_EQ(response.group_id(), "raw");
  EXPECT_EQ(response.weight_version(), 1);

  auto client = Connect(address);
  auto fine = client->Generate(RandomRequests(rng, 1)[0], 0);
  ASSERT_TRUE(fine.ok()) << fine.status();
  EXPECT_EQ(fine->weight_version, 1);
}

TEST(RolloutWorkerTest, ServesPushedWeightsExactlyLikeTheInProcessEngine) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok()) << policy.status();
  LoopbackWorker w = StartLoopbackWorker();
  ASSERT_NE(w.worker, nullptr);
  auto& worker = w.worker;
  auto& client = w.client;

  auto requests = RandomRequests(rng, 6);
  // No weights yet: refused, not crashed.
  auto early = client->Generate(requests[0], 0);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition) << early.status();
  auto health = client->Health();
  ASSERT_TRUE(health.ok());
  EXPECT_FALSE(health->serving);

  ASSERT_TRUE(client->UpdateWeights(Export(**policy, 3)).ok());
  health = client->Health();
  ASSERT_TRUE(health.ok());
  EXPECT_TRUE(health->serving);
  EXPECT_EQ(health->weight_version, 3);
  EXPECT_EQ(health->worker_id, "w0");

  auto engine = Engine::Create(policy->get(), EngineOptions{});
  ASSERT_TRUE(engine.ok());
  auto local = (*engine)->Generate(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    auto remote = client->Generate(requests[i], 3);
    ASSERT_TRUE(remote.ok()) << remote.status();
    EXPECT_EQ(remote->weight_version, 3);
    ASSERT_TRUE(local[i].status.ok());
    ASSERT_EQ(remote->samples.size(), local[i].samples.size());
    for (size_t k = 0; k < remote->samples.size(); ++k) {
      EXPECT_EQ(remote->samples[k].tokens, local[i].samples[k].tokens) << "group " << i;
      ASSERT_EQ(remote->samples[k].logprobs.size(), local[i].samples[k].logprobs.size());
      for (size_t t = 0; t < remote->samples[k].logprobs.size(); ++t) {
        EXPECT_NEAR(remote->samples[k].logprobs[t], local[i].samples[k].logprobs[t], 1e-4);
      }
      EXPECT_EQ(remote->samples[k].finish_reason, local[i].samples[k].finish_reason);
    }
  }

  // A stale version is refused and changes nothing; a newer bf16 one is taken.
  auto stale = client->UpdateWeights(Export(**policy, 3));
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition) << stale;
  ASSERT_TRUE(client->UpdateWeights(Export(**policy, 4, DType::kBF16)).ok());
  EXPECT_EQ(worker->stats().weight_version, 4);
  auto after = client->Generate(requests[1], 4);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->weight_version, 4);
  // A resumed controller may go back to an older version, but only when it says so.
  ASSERT_TRUE(client->UpdateWeights(Export(**policy, 2), /*replace_newer=*/true).ok());
  EXPECT_EQ(worker->stats().weight_version, 2);
}

// The run's numerics mode travels with its weights: pushed with batch_invariant, the
// worker's engine switches to the mode, and each group it generates alone has the same
// tokens and logprob bits as an in-process engine in the mode running all groups as one
// batch; a later push without the mode switches it back.
TEST(RolloutWorkerTest, TakesTheRunsNumericsModeWithItsWeights) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok()) << policy.status();
  LoopbackWorker w = StartLoopbackWorker();
  ASSERT_NE(w.worker, nullptr);
  RolloutClient* client = w.client.get();
  WeightSet set = Export(**policy, 1);
  set.batch_invariant = true;
  ASSERT_TRUE(client->UpdateWeights(set).ok());
  auto health = client->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_TRUE(health->batch_invariant);

  EngineOptions eopts;
  eopts.batch_invariant = true;
  auto engine = Engine::Create(policy->get(), eopts);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto requests = RandomRequests(rng, 6);
  for (auto& r : requests) r.params.temperature = 1.0;
  auto together = (*engine)->Generate(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    auto alone = client->Generate(requests[i], 1);
    ASSERT_TRUE(alone.ok()) << alone.status();
    ASSERT_TRUE(together[i].status.ok()) << together[i].status;
    ASSERT_EQ(alone->samples.size(), together[i].samples.size());
    for (size_t k = 0; k < alone->samples.size(); ++k) {
      EXPECT_EQ(alone->samples[k].tokens, together[i].samples[k].tokens) << "group " << i;
      EXPECT_EQ(alone->samples[k].logprobs, together[i].samples[k].logprobs) << "group " << i;
    }
  }

  set = Export(**policy, 2);
  ASSERT_TRUE(client->UpdateWeights(set).ok());
  health = client->Health();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_FALSE(health->batch_invariant);
  EXPECT_EQ(health->weight_version, 2);
}

grpc::Status RawGenerate(lightrl::v1::RolloutService::Stub& stub,
                         const lightrl::v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto reader = stub.Generate(&context, request);
  lightrl::v1::GenerateResponse response;
  while (reader->Read(&response)) {
  }
  return reader->Finish();
}

grpc::Status RawUpdate(lightrl::v1::RolloutService::Stub& stub,
                       const std::vector<lightrl::v1::WeightChunk>& chunks) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  lightrl::v1::UpdateWeightsResponse response;
  auto writer = stub.UpdateWeights(&context, &response);
  for (const auto& c : chunks) {
    if (!writer->Write(c)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

TEST(RolloutWorkerTest, BadWireInputIsRefusedWithAReasonAndTheWorkerKeepsServing) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  auto worker = RolloutWorker::Start(RolloutWorkerOptions{}, std::move(*policy), 1);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto channel = grpc::CreateChannel((*worker)->address(), grpc::InsecureChannelCredentials());
  auto stub = lightrl::v1::RolloutService::NewStub(channel);

  auto good = [] {
    lightrl::v1::GenerateRequest r;
    r.set_group_id("g");
    r.add_prompt_tokens(5);
    r.add_prompt_tokens(7);
    r.mutable_sampling()->set_max_new_tokens(3);
    r.mutable_sampling()->set_n(2);
    r.mutable_sampling()->set_temperature(1.0);
    return r;
  };
  struct Case {
    const char* what;
    std::function<void(lightrl::v1::GenerateRequest&)> mutate;
    grpc::StatusCode code;
    const char* mentions;
  };
  const std::vector<Case> cases = {
      {"token out of range", [](auto& r) { r.add_prompt_tokens(61); }, grpc::INVALID_ARGUMENT, "61"},
      {"negative token", [](auto& r) { r.set_prompt_tokens(0, -1); }, grpc::INVALID_ARGUMENT, "-1"},
      {"empty prompt", [](auto& r) { r.clear_prompt_tokens(); }, grpc::INVALID_ARGUMENT, "empty prompt"},
      {"NaN temperature",
       [](auto& r) { r.mutable_sampling()->set_temperature(std::nan("")); },
       grpc::INVALID_ARGUMENT, "temperature"},
      {"top_p > 1", [](auto& r) { r.mutable_sampling()->set_top_p(1.5); }, grpc::INVALID_ARGUMENT, "top_p"},
      {"n = 0", [](auto& r) { r.mutable_sampling()->set_n(0); }, grpc::INVALID_ARGUMENT, "n"},
      {"future weights", [](auto& r) { r.set_min_weight_version(9); }, grpc::FAILED_PRECONDITION,
       "min_weight_version 9"},
      {"stop strings without a tokenizer",
       [](auto& r) { r.mutable_sampling()->add_stop_strings("x"); }, grpc::INVALID_ARGUMENT,
       "tokenizer"},
  };
  for (const Case& c : cases) {
    auto r = good();
    c.mutate(r);
    grpc::Status s = RawGenerate(*stub, r);
    EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.mentions), std::string::npos) << c.what << ": " << s.error_message();
  }

  // Weight streams that are malformed, inconsistent, corrupted or stale.
  auto fresh = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(fresh.ok());
  WeightSet set = Export(**fresh, 2);
  auto stream = [&](const WeightSet& w) {
    std::vector<lightrl::v1::WeightChunk> out;
    lightrl::v1::WeightChunk header;
    auto* h = header.mutable_header();
    h->set_version(w.version);
    h->set_dtype("F32");
    h->set_model_config_json(w.model_config_json);
    for (const auto& t : w.tensors) {
      auto* info = h->add_tensors();
      info->set_name(t.name);
      for (int64_t d : t.shape) info->add_shape(d);
    }
    out.push_back(header);
    for (size_t i = 0; i < w.tensors.size(); ++i) {
      lightrl::v1::WeightChunk c;
      c.set_tensor_index(static_cast<int32_t>(i));
      c.set_data(w.tensors[i].data);
      out.push_back(c);
    }
    return out;
  };
  {
    auto s = stream(set);  // no CRC set: the check at the end catches it
    grpc::Status st = RawUpdate(*stub, s);
    EXPECT_EQ(st.error_code(), grpc::DATA_LOSS) << st.error_message();
  }
  {
    auto s = stream(set);
    std::swap(s[0], s[1]);
    grpc::Status st = RawUpdate(*stub, s);
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("before the header"), std::string::npos) << st.error_message();
  }
  {
    auto s = stream(set);
    s[1].set_tensor_index(100000);
    grpc::Status st = RawUpdate(*stub, s);
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
  }
  {
    auto s = stream(set);
    s[1].set_offset(8);
    grpc::Status st = RawUpdate(*stub, s);
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
  }
  {
    auto s = stream(set);
    s[0].mutable_header()->set_dtype("I64");
    grpc::Status st = RawUpdate(*stub, s);
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
  }
  {
    // Consistent stream of a model with an extra tensor: rejected by name at install.
    WeightSet extra = set;
    extra.tensors.push_back({"model.layers.9.mlp.weight", {2}, std::string(8, '\0')});
    auto client = Connect((*worker)->address());
    absl::Status st = client->UpdateWeights(extra);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find("model.layers.9.mlp.weight"), std::string::npos) << st;
    WeightSet other_model = set;
    ModelConfig c = TinyConfig();
    c.hidden_size = 16;
    other_model.model_config_json = c.ToJson().Dump();
    st = client->UpdateWeights(other_model);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    WeightSet stale = set;
    stale.version = 1;
    st = client->UpdateWeights(stale);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    // After all of that the worker still serves version 1, and then takes version 2.
    EXPECT_EQ((*worker)->stats().weight_version, 1);
    ASSERT_TRUE(RawGenerate(*stub, good()).ok());
    ASSERT_TRUE(client->UpdateWeights(set).ok());
    EXPECT_EQ((*worker)->stats().weight_version, 2);
    ASSERT_TRUE(RawGenerate(*stub, good()).ok());
  }
}

// Peak resident memory of this process (the workers run in it), in bytes.
int64_t PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

lightrl::v1::WeightChunk HeaderOf(const WeightSet& set) {
  lightrl::v1::WeightChunk chunk;
  auto* h = chunk.mutable_header();
  h->set_version(set.version);
  h->set_dtype("F32");
  h->set_model_config_json(set.model_config_json);
  for (const auto& t : set.tensors) {
    auto* info = h->add_tensors();
    info->set_name(t.name);
    for (int64_t d : t.shape) info->add_shape(d);
  }
  return chunk;
}

// A weight header is checked against the served model (names, shapes) and the byte
// budget before anything is allocated, and tensor memory grows only with the bytes that
// arrive: headers declaring gigabytes cost nothing and are refused naming the tensor.
TEST(RolloutWorkerTest, AWeightHeaderIsCheckedBeforeAnythingIsAllocated) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  const WeightSet set = Export(**policy, 2);
  auto served = RolloutWorker::Start(RolloutWorkerOptions{}, std::move(*policy), 1);
  ASSERT_TRUE(served.ok()) << served.status();
  auto stub = lightrl::v1::RolloutService::NewStub(
      grpc::CreateChannel((*served)->address(), grpc::InsecureChannelCredentials()));
  const int64_t peak_before = PeakRssBytes();
  const std::string victim = set.tensors[1].name;
  {
    // One tensor declared as 2 GiB of FP32.
    auto header = HeaderOf(set);
    header.mutable_header()->mutable_tensors(1)->clear_shape();
    header.mutable_header()->mutable_tensors(1)->add_shape(int64_t{1} << 29);
    grpc::Status st = RawUpdate(*stub, {header});
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find(victim), std::string::npos) << st.error_message();
    EXPECT_NE(st.error_message().find("served model"), std::string::npos) << st.error_message();
  }
  {
    auto header = HeaderOf(set);
    header.mutable_header()->mutable_tensors(1)->set_name("model.layers.0.extra.weight");
    grpc::Status st = RawUpdate(*stub, {header});
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("model.layers.0.extra.weight"), std::string::npos)
        << st.error_message();
  }
  {
    auto header = HeaderOf(set);
    auto* extra = header.mutable_header()->add_tensors();
    extra->set_name("model.layers.9.huge.weight");
    extra->add_shape(int64_t{1} << 30);
    grpc::Status st = RawUpdate(*stub, {header});
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("'model.layers.9.huge.weight' is not in the served model"),
              std::string::npos)
        << st.error_message();
  }

  // A worker with no model yet cannot check names: the budget bounds the header, and
  // memory follows the bytes received.
  RolloutWorkerOptions small;
  small.max_weight_bytes = 16 << 20;
  auto fresh = RolloutWorker::Start(small);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  auto fresh_stub = lightrl::v1::RolloutService::NewStub(
      grpc::CreateChannel((*fresh)->address(), grpc::InsecureChannelCredentials()));
  {
    auto header = HeaderOf(set);
    header.mutable_header()->mutable_tensors(1)->clear_shape();
    header.mutable_header()->mutable_tensors(1)->add_shape(int64_t{1} << 29);
    grpc::Status st = RawUpdate(*fresh_stub, {header});
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("budget of 16777216 bytes"), std::string::npos) << st.error_message();
    EXPECT_NE(st.error_message().find(victim), std::string::npos) << st.error_message();
  }
  auto roomy = RolloutWorker::Start(RolloutWorkerOptions{});
  ASSERT_TRUE(roomy.ok()) << roomy.status();
  auto roomy_stub = lightrl::v1::RolloutService::NewStub(
      grpc::CreateChannel((*roomy)->address(), grpc::InsecureChannelCredentials()));
  {
    // 512 MiB declared, none of it sent.
    auto header = HeaderOf(set);
    header.mutable_header()->mutable_tensors(1)->clear_shape();
    header.mutable_header()->mutable_tensors(1)->add_shape(int64_t{1} << 27);
    grpc::Status st = RawUpdate(*roomy_stub, {header});
    EXPECT_EQ(st.error_code(), grpc::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("has 0 of"), std::string::npos) << st.error_message();
  }
  EXPECT_LT(PeakRssBytes() - peak_before, int64_t{256} << 20);

  // Well-formed updates are still taken by all three.
  auto client = Connect((*served)->address());
  EXPECT_TRUE(client->UpdateWeights(set).ok());
  EXPECT_EQ((*served)->stats().weight_version, 2);
  EXPECT_TRUE(Connect((*fresh)->address())->UpdateWeights(set).ok());
  EXPECT_TRUE(Connect((*roomy)->address())->UpdateWeights(set).ok());
}

// Six groups arrive together; one asks for top_p = 1e-300 (0 in the sampler's FP32). It is
// refused at the door with a reason, and the five valid ones batched with it succeed.
TEST(RolloutWorkerTest, ABadSamplingRequestFailsAloneAndTheOnesBatchedWithItGoOn) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  RolloutWorkerOptions wopts;
  wopts.batch_window = absl::Milliseconds(200);  // all six land in one engine batch
  auto worker = RolloutWorker::Start(wopts, std::move(*policy), 1);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto channel = grpc::CreateChannel((*worker)->address(), grpc::InsecureChannelCredentials());
  auto stub = lightrl::v1::RolloutService::NewStub(channel);
  std::vector<lightrl::v1::GenerateRequest> requests(6);
  for (int i = 0; i < 6; ++i) {
    auto& r = requests[i];
    r.set_group_id("g" + std::to_string(i));
    for (int t = 0; t < 4; ++t) r.add_prompt_tokens(static_cast<int32_t>(rng() % 61));
    r.mutable_sampling()->set_max_new_tokens(5);
    r.mutable_sampling()->set_n(2);
    r.mutable_sampling()->set_temperature(1.0);
    r.mutable_sampling()->set_top_p(i == 3 ? 1e-300 : 0.9);
    r.mutable_sampling()->set_seed(rng());
  }
  std::vector<grpc::Status> statuses(6);
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] { statuses[i] = RawGenerate(*stub, requests[i]); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 6; ++i) {
    if (i == 3) {
      EXPECT_EQ(statuses[i].error_code(), grpc::INVALID_ARGUMENT) << statuses[i].error_message();
      EXPECT_NE(statuses[i].error_message().find("top_p"), std::string::npos) << statuses[i].error_message();
      EXPECT_NE(statuses[i].error_message().find("1e-300"), std::string::npos) << statuses[i].error_message();
      EXPECT_NE(statuses[i].error_message().find("g3"), std::string::npos) << statuses[i].error_message();
    } else {
      EXPECT_TRUE(statuses[i].ok()) << "g" << i << ": " << statuses[i].error_message();
    }
  }
}

// A client that gives up on a long generation (its deadline passes) frees the worker: the
// engine drops the group's sequences at its next step and the next small call is served
// at once instead of after the abandoned group's thousands of tokens.
TEST(RolloutWorkerTest, AnAbandonedGenerateFreesTheWorkerForTheNextCall) {
  std::mt19937 rng(std::random_device{}());
  ModelConfig config = TinyConfig();
  config.max_position_embeddings = 8192;
  auto policy = PolicyModel::Create(config, rng());
  ASSERT_TRUE(policy.ok());
  auto worker = RolloutWorker::Start(RolloutWorkerOptions{}, std::move(*policy), 1);
  ASSERT_TRUE(worker.ok()) << worker.status();
  auto channel = grpc::CreateChannel((*worker)->address(), grpc::InsecureChannelCredentials());
  auto stub = lightrl::v1::RolloutService::NewStub(channel);
  lightrl::v1::GenerateRequest big;
  big.set_group_id("big");
  big.add_prompt_tokens(3);
  big.mutable_sampling()->set_max_new_tokens(8000);
  big.mutable_sampling()->set_n(16);
  big.mutable_sampling()->set_temperature(1.0);
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(500));
    auto reader = stub->Generate(&context, big);
    lightrl::v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::DEADLINE_EXCEEDED);
  }
  lightrl::v1::GenerateRequest small = big;
  small.set_group_id("small");
  small.mutable_sampling()->set_max_new_tokens(4);
  small.mutable_sampling()->set_n(1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto reader = stub->Generate(&context, small);
  lightrl::v1::GenerateResponse response;
  int samples = 0;
  while (reader->Read(&response)) ++samples;
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
  EXPECT_EQ(samples, 1);
  // The abandoned group generated a few hundred milliseconds' worth, not 16 x 8000 tokens.
  EXPECT_LT((*worker)->stats().generated_tokens, 16 * 2000);
}

// Generate requests of ~5 MiB (a prompt padded with an unknown field, which parses but
// costs the engine nothing) that run until cancelled: three fit the 16 MiB in-flight
// budget, the fourth is RESOURCE_EXHAUSTED naming it at once while the worker keeps
// answering, and the request bytes held never pass the budget.
TEST(RolloutWorkerTest, ConcurrentLargeCallsPastTheInflightBudgetAreRefused) {
  std::mt19937 rng(std::random_device{}());
  ModelConfig config = TinyConfig();
  config.max_position_embeddings = 8192;
  auto policy = PolicyModel::Create(config, rng());
  ASSERT_TRUE(policy.ok());
  RolloutWorkerOptions wopts;
  wopts.max_message_bytes = 8 << 20;
  wopts.max_inflight_bytes = 16 << 20;
  auto worker = RolloutWorker::Start(wopts, std::move(*policy), 1);
  ASSERT_TRUE(worker.ok()) << worker.status();
  EXPECT_EQ((*worker)->stats().inflight_budget_bytes, 16 << 20);
  auto channel = grpc::CreateChannel((*worker)->address(), grpc::InsecureChannelCredentials());
  auto stub = lightrl::v1::RolloutService::NewStub(channel);
  lightrl::v1::GenerateRequest big;
  big.add_prompt_tokens(3);
  big.mutable_sampling()->set_max_new_tokens(8000);
  big.mutable_sampling()->set_n(16);
  big.mutable_sampling()->set_temperature(1.0);
  big.GetReflection()->MutableUnknownFields(&big)->AddLengthDelimited(1000,
                                                                     std::string(5 << 20, 'x'));

  constexpr int kHeld = 3;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<grpc::Status> held(kHeld);
  std::vector<std::thread> calls;
  for (int i = 0; i < kHeld; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    calls.emplace_back([&, i] {
      lightrl::v1::GenerateRequest request = big;
      request.set_group_id(absl::StrCat("held", i));
      auto reader = stub->Generate(contexts[i].get(), request);
      lightrl::v1::GenerateResponse response;
      while (reader->Read(&response)) {
      }
      held[i] = reader->Finish();
    });
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  auto groups = [&] {
    const RolloutWorkerStats s = (*worker)->stats();
    return s.active_groups + s.queued_groups;
  };
  while (groups() < kHeld && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(groups(), kHeld);

  {
    lightrl::v1::GenerateRequest request = big;
    request.set_group_id("over");
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto reader = stub->Generate(&context, request);
    lightrl::v1::GenerateResponse response;
    EXPECT_FALSE(reader->Read(&response));
    const grpc::Status refused = reader->Finish();
    EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_TRUE(absl::StrContains(refused.error_message(),
                                  "rollout worker in-flight budget (max_inflight_bytes, "
                                  "--max-inflight-mb) of 16777216 bytes"))
        << refused.error_message();
  }
  auto health = Connect((*worker)->address())->Health();
  EXPECT_TRUE(health.ok()) << health.status();

  for (auto& context : contexts) context->TryCancel();
  for (std::thread& call : calls) call.join();
  for (const grpc::Status& status : held) EXPECT_EQ(status.error_code(), grpc::CANCELLED);
  EXPECT_LE((*worker)->stats().peak_inflight_bytes, 16 << 20);
  EXPECT_GE((*worker)->stats().peak_inflight_bytes, kHeld * (5 << 20));
  // The budget is free again once the held calls are gone.
  auto fine = Connect((*worker)->address())->Generate(RandomRequests(rng, 1)[0], 0);
  EXPECT_TRUE(fine.ok()) << fine.status();

  RolloutWorkerOptions too_small;
  too_small.max_message_bytes = 8 << 20;
  too_small.max_inflight_bytes = 4 << 20;
  EXPECT_EQ(too_small.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*RolloutWorker::Start(RolloutWorkerOptions{}))->stats().inflight_budget_bytes,
            int64_t{4} * (64 << 20));
}

// A device publish that cannot broadcast (here: a build without NCCL, or CPU workers)
// still delivers the version, by the gRPC stream, and counts the fallback.
TEST(RolloutFleetTest, DevicePublishFallsBackToTheStreamWhenNoBroadcastIsPossible) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok()) << policy.status();
  RolloutWorkerOptions wopts;
  wopts.worker_id = "cpu-worker";
  auto worker = RolloutWorker::Start(wopts);
  ASSERT_TRUE(worker.ok()) << worker.status();
  const std::string address = (*worker)->address();
  RolloutFleetHooks hooks;
  hooks.list_workers = [&] { return std::vector<WorkerEndpoint>{{"cpu-worker", address, 2}}; };
  auto fleet = RolloutFleet::Create(RolloutFleetOptions{}, hooks);
  ASSERT_TRUE(fleet.ok()) << fleet.status();

  DeviceWeights w;
  w.version = 7;
  w.model_config_json = (*policy)->config().ToJson().Dump();
  auto params = (*policy)->ParameterBuffers();
  ASSERT_TRUE(params.ok()) << params.status();
  for (const auto& p : *params) {
    w.names.push_back(p.name);
    w.buffers.push_back({p.data, p.bytes});
  }
  int exports = 0;
  w.export_host = [&]() -> absl::StatusOr<WeightSet> {
    ++exports;
    return Export(**policy, 7);
  };
  w.timeout = absl::Seconds(20);
  ASSERT_TRUE((*fleet)->PublishDeviceWeights(w).ok());
  EXPECT_EQ((*worker)->stats().weight_version, 7);
  EXPECT_EQ((*fleet)->stats().weight_broadcasts, 0);
  EXPECT_EQ((*fleet)->stats().broadcast_fallbacks, 1);
  EXPECT_EQ(exports, 1);
  EXPECT_EQ((*fleet)->published_version(), 7);

  // The worker serves the fallback's weights exactly like the in-process engine.
  auto requests = RandomRequests(rng, 3);
  auto outcomes = (*fleet)->Generate(requests, 7);
  auto engine = Engine::Create(policy->get(), EngineOptions{});
  ASSERT_TRUE(engine.ok());
  auto local = (*engine)->Generate(requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    EXPECT_EQ(outcomes[i].output.weight_version, 7);
    ASSERT_EQ(outcomes[i].output.samples.size(), local[i].samples.size());
    for (size_t k = 0; k < local[i].samples.size(); ++k) {
      EXPECT_EQ(outcomes[i].output.samples[k].tokens, local[i].samples[k].tokens);
    }
  }
  // Bad device weights are refused before anything is sent.
  DeviceWeights bad = w;
  bad.names.pop_back();
  EXPECT_EQ((*fleet)->PublishDeviceWeights(bad).code(), absl::StatusCode::kInvalidArgument);
}

// A rollout worker that takes weights like a real one and answers Generate with n
// samples that are wrong in one way.
class LyingWorker final : public lightrl::v1::RolloutService::Service {
 public:
  enum class Lie { kNanLogprobs, kTooLong, kOutOfVocab, kPositiveLogprob };
  explicit LyingWorker(Lie lie) : lie_(lie) {}

  grpc::Status Generate(grpc::ServerContext*, const lightrl::v1::GenerateRequest* request,
                        grpc::ServerWriter<lightrl::v1::GenerateResponse>* writer) override {
    const int64_t len = lie_ == Lie::kTooLong ? request->sampling().max_new_tokens() + 5 : 2;
    for (int64_t i = 0; i < request->sampling().n(); ++i) {
      lightrl::v1::GenerateResponse response;
      response.set_group_id(request->group_id());
      response.set_weight_version(version_.load());
      auto* sample = response.mutable_sample();
      sample->set_index(static_cast<int32_t>(i));
      sample->set_finish_reason("length");
      for (int64_t t = 0; t < len; ++t) {
        sample->add_tokens(lie_ == Lie::kOutOfVocab && t == 1 ? 61 : 1);
        float lp = -0.5f;
        if (lie_ == Lie::kNanLogprobs && t == 1) lp = std::numeric_limits<float>::quiet_NaN();
        if (lie_ == Lie::kPositiveLogprob && t == 0) lp = 2.0f;
        sample->add_logprobs(lp);
      }
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
    response->set_weight_version(version_.load());
    return grpc::Status::OK;
  }
  grpc::Status Health(grpc::ServerContext*, const lightrl::v1::RolloutHealthRequest*,
                      lightrl::v1::RolloutHealthResponse* response) override {
    response->set_serving(version_.load() >= 0);
    response->set_weight_version(version_.load());
    return grpc::Status::OK;
  }

 private:
  Lie lie_;
  std::atomic<int64_t> version_{-1};
};

// Workers that return NaN logprobs, positive logprobs, token ids outside the vocabulary or
// more than max_new_tokens tokens are reported by id and their groups run on the honest
// worker; nothing they sent reaches the outcomes.
TEST(RolloutFleetTest, AWorkerThatReturnsGarbageIsReportedAndItsGroupsRequeued) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  RolloutWorkerOptions o;
  o.worker_id = "honest";
  auto honest = RolloutWorker::Start(o);
  ASSERT_TRUE(honest.ok()) << honest.status();
  const std::vector<std::pair<std::string, LyingWorker::Lie>> lies = {
      {"liar-nan", LyingWorker::Lie::kNanLogprobs},
      {"liar-long", LyingWorker::Lie::kTooLong},
      {"liar-vocab", LyingWorker::Lie::kOutOfVocab},
      {"liar-positive", LyingWorker::Lie::kPositiveLogprob}};
  std::vector<std::unique_ptr<LyingWorker>> liars;
  std::vector<std::unique_ptr<grpc::Server>> servers;
  std::vector<WorkerEndpoint> endpoints = {{"honest", (*honest)->address(), 4}};
  for (const auto& [id, lie] : lies) {
    liars.push_back(std::make_unique<LyingWorker>(lie));
    int port = 0;
    auto server = StartGrpcServer("127.0.0.1:0", liars.back().get(), &port);
    ASSERT_TRUE(server.ok()) << server.status();
    servers.push_back(*std::move(server));
    endpoints.push_back({id, "127.0.0.1:" + std::to_string(port), 2});
  }
  absl::Mutex mu;
  std::set<std::string> reported;
  RolloutFleetHooks hooks;
  hooks.list_workers = [&] {
    absl::MutexLock lock(&mu);
    std::vector<WorkerEndpoint> live;
    for (const auto& e : endpoints) {
      if (!reported.count(e.worker_id)) live.push_back(e);
    }
    return live;
  };
  hooks.on_worker_failed = [&](const std::string& id) {
    absl::MutexLock lock(&mu);
    reported.insert(id);
  };
  RolloutFleetOptions fopts;
  fopts.max_group_attempts = 6;
  fopts.rpc_deadline = absl::Seconds(20);
  fopts.generate_deadline = absl::Seconds(30);
  auto fleet = RolloutFleet::Create(fopts, hooks);
  ASSERT_TRUE(fleet.ok());
  ASSERT_TRUE((*fleet)->PublishWeights(Export(**policy, 1)).ok());
  auto requests = RandomRequests(rng, 12);
  auto outcomes = (*fleet)->Generate(requests, 1);
  for (size_t i = 0; i < outcomes.size(); ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    ASSERT_EQ(outcomes[i].output.samples.size(), static_cast<size_t>(requests[i].params.n));
    for (const auto& sample : outcomes[i].output.samples) {
      EXPECT_LE(static_cast<int64_t>(sample.tokens.size()), requests[i].params.max_new_tokens);
      for (size_t t = 0; t < sample.tokens.size(); ++t) {
        EXPECT_LT(sample.tokens[t], 61);
        EXPECT_TRUE(std::isfinite(sample.logprobs[t]));
        EXPECT_LE(sample.logprobs[t], 0.0f);
      }
    }
  }
  EXPECT_GE((*fleet)->stats().groups_requeued, static_cast<int64_t>(lies.size()));
  {
    absl::MutexLock lock(&mu);
    for (const auto& [id, lie] : lies) EXPECT_TRUE(reported.count(id)) << id << " was not reported";
    EXPECT_FALSE(reported.count("honest"));
  }

  // The check itself, on replies a worker could send.
  GenerationRequest request = requests[0];
  request.params.n = 1;
  request.params.max_new_tokens = 3;
  GroupOutput out;
  out.samples.push_back({{1, 2}, {-0.1f, -2.0f}, FinishReason::kLength});
  EXPECT_TRUE(CheckGroupOutput(request, out, 61).ok());
  out.samples[0].logprobs[1] = -std::numeric_limits<float>::infinity();
  EXPECT_NE(std::string(CheckGroupOutput(request, out, 61).message()).find("-inf"), std::string::npos);
  out.samples[0].logprobs = {-0.1f};
  EXPECT_NE(std::string(CheckGroupOutput(request, out, 61).message()).find("2 tokens but 1 logprobs"),
            std::string::npos);
  out.samples[0] = {{1, 2}, {-0.1f, -2.0f}, FinishReason::kLength};
  out.samples.push_back(out.samples[0]);
  EXPECT_NE(std::string(CheckGroupOutput(request, out, 61).message()).find("2 samples, asked for 1"),
            std::string::npos);
}

TEST(RolloutFleetTest, GroupsOfADeadWorkerRunOnTheLiveOnesAndEveryoneGetsTheWeights) {
  std::mt19937 rng(std::random_device{}());
  auto policy = PolicyModel::Create(TinyConfig(), rng());
  ASSERT_TRUE(policy.ok());
  std::vector<std::unique_ptr<RolloutWorker>> workers;
  for (int i = 0; i < 2; ++i) {
    RolloutWorkerOptions o;
    o.worker_id = "w" + std::to_string(i);
    auto w = RolloutWorker::Start(o);
    ASSERT_TRUE(w.ok()) << w.status();
    workers.push_back(*std::move(w));
  }
  // A third worker that has gone: its port is closed.
  std::string dead_address;
  {
    RolloutWorkerOptions o;
    auto w = RolloutWorker::Start(o);
    ASSERT_TRUE(w.ok());
    dead_address = (*w)->address();
  }
  absl::Mutex mu;
  std::set<std::string> reported;
  RolloutFleetHooks hooks;
  hooks.list_workers = [&] {
    absl::MutexLock lock(&mu);
    std::vector<WorkerEndpoint> live;
    for (size_t i = 0; i < workers.size(); ++i) live.push_back({"w" + std::to_string(i), workers[i]->address(), 2});
    if (!reported.count("dead")) live.push_back({"dead", dead_address, 2});
    return live;
  };
  hooks.on_worker_failed = [&](const std::string& id) {
    absl::MutexLock lock(&mu);
    reported.insert(id);
  };
  RolloutFleetOptions fopts;
  fopts.rpc_deadline = absl::Seconds(20);
  fopts.generate_deadline = absl::Seconds(60);
  auto fleet = RolloutFleet::Create(fopts, hooks);
  ASSERT_TRUE(fleet.ok());
  ASSERT_TRUE((*fleet)->PublishWeights(Export(**policy, 5)).ok());
  {
    absl::MutexLock lock(&mu);
    EXPECT_TRUE(reported.count("dead"));
  }
  for (auto& w : workers) EXPECT_EQ(w->stats().weight_version, 5);

  auto requests = RandomRequests(rng, 12);
  auto outcomes = (*fleet)->Generate(requests, 5);
  ASSERT_EQ(outcomes.size(), requests.size());
  auto engine = Engine::Create(policy->get(), EngineOptions{});
  ASSERT_TRUE(engine.ok());
  auto local = (*engine)->Generate(requests);
  for (size_t i = 0; i < outcomes.size(); ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    EXPECT_EQ(outcomes[i].output.group_id, requests[i].id);
    EXPECT_EQ(outcomes[i].output.weight_version, 5);
    ASSERT_EQ(outcomes[i].output.samples.size(), local[i].samples.size());
    for (size_t k = 0; k < local[i].samples.size(); ++k) {
      EXPECT_EQ(outcomes[i].output.samples[k].tokens, local[i].samples[k].tokens);
    }
  }
  int64_t generated = 0, batches = 0;
  for (auto& w : workers) {
    generated += w->stats().generated_tokens;
    batches += w->stats().engine_batches;
  }
  EXPECT_GT(generated, 0);
  // Groups in flight together share engine batches: never more batches than groups.
  EXPECT_GE(batches, 1);
  EXPECT_LE(batches, static_cast<int64_t>(requests.size()));

  // One worker goes away between steps: the next step runs on the other.
  workers[1]->Shutdown();
  ASSERT_TRUE((*fleet)->PublishWeights(Export(**policy, 6)).ok());
  outcomes = (*fleet)->Generate(RandomRequests(rng, 5), 6);
  for (const auto& o : outcomes) {
    ASSERT_TRUE(o.status.ok()) << o.status;
    EXPECT_EQ(o.output.weight_version, 6);
  }
  EXPECT_GE((*fleet)->stats().worker_failures, 2);
}

}  // namespace
}  // namespace lightrl
