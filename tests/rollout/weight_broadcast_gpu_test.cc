// NCCL weight broadcast on two GPUs: a learner policy on cuda:0 publishes versions to a
// real rollout worker (gRPC on loopback) whose engine runs on cuda:1; the worker then
// generates exactly what an in-process engine with the learner's weights generates. Also
// times the publish and a raw broadcast of the same bytes, and a 1 GiB raw broadcast (the
// bandwidth NCCL reaches between the two GPUs). Label gpu; needs two GPUs and a CUDA
// build with NCCL. LIGHTRL_BROADCAST_MODEL_CONFIG names a config.json to use instead of
// the small built-in model (the bench model, for the figures).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "common/status.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"
#include "rollout/nccl_weight_group.h"
#include "rollout/rollout_client.h"
#include "rollout/rollout_worker.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

ModelConfig TestConfig() {
  if (const char* path = std::getenv("LIGHTRL_BROADCAST_MODEL_CONFIG")) {
    auto c = ModelConfig::FromFile(path);
    EXPECT_TRUE(c.ok()) << c.status();
    return *c;
  }
  return SmallGpuConfig();
}

int GpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

DeviceWeights DeviceWeightsOf(PolicyModel& policy, int64_t version) {
  DeviceWeights w;
  w.version = version;
  w.model_config_json = policy.config().ToJson().Dump();
  w.device = policy.device_index();
  auto params = policy.ParameterBuffers();
  EXPECT_TRUE(params.ok()) << params.status();
  for (const auto& p : *params) {
    w.names.push_back(p.name);
    w.buffers.push_back({p.data, p.bytes});
  }
  w.export_host = [&policy, version]() -> absl::StatusOr<WeightSet> {
    WeightSet set;
    set.version = version;
    set.dtype = DType::kBF16;
    set.model_config_json = policy.config().ToJson().Dump();
    ASSIGN_OR_RETURN(set.tensors, policy.ExportWeights(set.dtype));
    return set;
  };
  w.timeout = absl::Seconds(120);
  return w;
}

std::vector<GenerationRequest> Requests(std::mt19937& rng, int64_t vocab) {
  std::vector<GenerationRequest> out;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest r;
    r.id = "g" + std::to_string(i);
    for (int t = 0; t < 5 + i * 7; ++t) r.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    r.params.temperature = 0;
    r.params.max_new_tokens = 24;
    r.params.early_stop_window = 0;
    out.push_back(std::move(r));
  }
  return out;
}

TEST(WeightBroadcastGpuTest, WorkerOnAnotherGpuServesTheBroadcastVersion) {
  if (GpuCount() < 2 || !NcclWeightGroup::Available()) {
    GTEST_SKIP() << "needs two GPUs and a build with NCCL; found " << GpuCount() << " GPUs"
                 << (NcclWeightGroup::Available() ? "" : " and no NCCL");
  }
  std::mt19937 rng(std::random_device{}());
  PolicyOptions learner_opts;
  learner_opts.device = "cuda:0";
  learner_opts.dtype = "bfloat16";
  auto first = PolicyModel::Create(TestConfig(), rng(), learner_opts);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = PolicyModel::Create(TestConfig(), rng(), learner_opts);
  ASSERT_TRUE(second.ok()) << second.status();

  RolloutWorkerOptions wopts;
  wopts.worker_id = "gpu-worker";
  wopts.policy.device = "cuda:1";
  wopts.policy.dtype = "bfloat16";
  auto worker = RolloutWorker::Start(wopts);  // no weights until the first broadcast
  ASSERT_TRUE(worker.ok()) << worker.status();
  const std::string address = (*worker)->address();

  RolloutFleetHooks hooks;
  hooks.list_workers = [&] { return std::vector<WorkerEndpoint>{{"gpu-worker", address, 4}}; };
  auto fleet = RolloutFleet::Create(RolloutFleetOptions{}, hooks);
  ASSERT_TRUE(fleet.ok()) << fleet.status();

  int64_t bytes = 0;
  for (const auto& b : DeviceWeightsOf(**first, 0).buffers) bytes += b.bytes;
  // Version 3 from the first policy (forms the group), then version 4 from another one
  // (the same group: the worker set has not changed).
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*fleet)->PublishDeviceWeights(DeviceWeightsOf(**first, 3)).ok());
  const double first_s = Seconds(start);
  EXPECT_EQ((*worker)->stats().weight_version, 3);
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*fleet)->PublishDeviceWeights(DeviceWeightsOf(**second, 4)).ok());
  const double second_s = Seconds(start);
  EXPECT_EQ((*worker)->stats().weight_version, 4);
  EXPECT_EQ((*fleet)->stats().weight_broadcasts, 2);
  EXPECT_EQ((*fleet)->stats().broadcast_fallbacks, 0);
  std::printf("publish of %.1f MB: %.3f s forming the group + broadcast, %.4f s broadcast alone "
              "(%.1f GB/s end to end, staging copy and RPCs included)\n",
              bytes / 1e6, first_s, second_s, bytes / second_s / 1e9);

  // The worker serves version 4: greedy tokens equal the in-process engine's on the
  // learner's GPU with the second policy.
  auto requests = Requests(rng, TestConfig().vocab_size);
  auto outcomes = (*fleet)->Generate(requests, /*min_weight_version=*/4);
  auto engine = Engine::Create(second->get(), EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto local = (*engine)->Generate(requests);
  int equal = 0, total = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    EXPECT_EQ(outcomes[i].output.weight_version, 4);
    ASSERT_EQ(outcomes[i].output.samples.size(), 1u);
    const auto& remote = outcomes[i].output.samples[0].tokens;
    const auto& here = local[i].samples[0].tokens;
    ASSERT_EQ(remote.size(), here.size());
    for (size_t t = 0; t < remote.size(); ++t) equal += remote[t] == here[t];
    total += static_cast<int>(remote.size());
  }
  std::printf("greedy tokens equal to the learner-side engine: %d of %d\n", equal, total);
  // Same weights, same kernels, two GPUs of one kind: identical.
  EXPECT_EQ(equal, total);
}

TEST(WeightBroadcastGpuTest, RawBroadcastBandwidth) {
  if (GpuCount() < 2 || !NcclWeightGroup::Available()) {
    GTEST_SKIP() << "needs two GPUs and a build with NCCL; found " << GpuCount() << " GPUs"
                 << (NcclWeightGroup::Available() ? "" : " and no NCCL");
  }
  const int64_t bytes = int64_t{1} << 30;
  auto uid = NcclWeightGroup::NewUniqueId();
  ASSERT_TRUE(uid.ok()) << uid.status();
  std::unique_ptr<NcclWeightGroup> groups[2];
  std::unique_ptr<DeviceStaging> buffers[2];
  absl::Status join[2];
  std::thread peer([&] {
    auto g = NcclWeightGroup::Join(*uid, 1, 2, 1, absl::Seconds(60));
    join[1] = g.status();
    if (g.ok()) groups[1] = *std::move(g);
  });
  auto g0 = NcclWeightGroup::Join(*uid, 0, 2, 0, absl::Seconds(60));
  peer.join();
  ASSERT_TRUE(g0.ok()) << g0.status();
  ASSERT_TRUE(join[1].ok()) << join[1];
  groups[0] = *std::move(g0);
  for (int r = 0; r < 2; ++r) {
    auto s = DeviceStaging::Allocate(bytes, r);
    ASSERT_TRUE(s.ok()) << s.status();
    buffers[r] = *std::move(s);
  }
  // Rank 0 holds a pattern; rank 1 must end with it.
  std::vector<uint8_t> pattern(1 << 20);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 131 + 7);
  auto slice = [&](int r) { return buffers[r]->Slices({bytes})[0]; };
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(slice(0).data, pattern.data(), pattern.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  double best = 1e9;
  for (int rep = 0; rep < 5; ++rep) {
    absl::Status st[2];
    const auto start = std::chrono::steady_clock::now();
    std::thread t1([&] { st[1] = groups[1]->Broadcast({slice(1)}, absl::Seconds(60)); });
    st[0] = groups[0]->Broadcast({slice(0)}, absl::Seconds(60));
    t1.join();
    best = std::min(best, Seconds(start));
    ASSERT_TRUE(st[0].ok()) << st[0];
    ASSERT_TRUE(st[1].ok()) << st[1];
  }
  std::vector<uint8_t> got(pattern.size());
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(got.data(), slice(1).data, got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(got, pattern);
  std::printf("raw NCCL broadcast of 1 GiB between two GPUs: best of 5 %.4f s, %.1f GB/s\n", best,
              bytes / best / 1e9);
}

}  // namespace
}  // namespace lightrl
