// The engine on CUDA in bf16 with the lightning kernels: the kernel-backed runner against
// the torch-op runner, greedy generation against the argmax of the policy's full forward,
// the engine's logprobs against the policy's training-path logprobs (M1's
// train/inference mismatch), prefills on their own stream beside decode steps against the
// one-stream order, and the sampler's fused kernel against the sampling oracle and the CPU
// sampler. Label gpu; built only with LIGHTRL_TORCH_CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "inference_engine/cuda_ops.h"
#include "inference_engine/engine.h"
#include "inference_engine/kv_cache.h"
#include "inference_engine/model_runner.h"
#include "kernels/sampling/sampling_reference.h"
#include "inference_engine/sampler.h"
#include "policy/minimax_model.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

constexpr int64_t kVocab = 512;

ModelConfig GpuConfig() { return SmallGpuConfig(); }

// A random model on CUDA: transformers' init (std 0.02) inside, norm weights 1, and a
// wider LM head so the next-token distributions are peaked and varied (logprobs spread
// over a wide range). Wide weights inside would make the random network chaotic, and
// bf16 rounding alone would then flip its outputs whatever the attention kernels do.
// The weights are drawn in FP32 and cast, so an FP32 copy holds the same values.
std::unique_ptr<PolicyModel> MakeGpuPolicy(uint64_t seed, const std::string& dtype = "bfloat16") {
  PolicyOptions options;
  options.device = "cuda";
  options.dtype = dtype;
  auto p = PolicyModel::Create(GpuConfig(), seed, options);
  EXPECT_TRUE(p.ok()) << p.status();
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  for (auto& named : (*p)->module()->named_parameters()) {
    auto& w = named.value();
    if (named.key().find("norm") != std::string::npos) {
      w.fill_(1);
      continue;
    }
    const double std = named.key().rfind("lm_head", 0) == 0 ? 0.25 : 0.02;
    w.copy_(torch::empty(w.sizes(), torch::kFloat32).normal_(0, std, gen));
  }
  return std::move(*p);
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, int n) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % kVocab);
  return t;
}

double RelativeError(const torch::Tensor& a, const torch::Tensor& b) {
  auto a64 = a.to(torch::kCPU, torch::kFloat64), b64 = b.to(torch::kCPU, torch::kFloat64);
  return ((a64 - b64).norm() / b64.norm()).item<double>();
}

TEST(EngineGpuTest, KernelRunnerMatchesTorchRunnerOnRaggedBatches) {
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed = rng();
  auto policy = MakeGpuPolicy(seed);
  auto oracle_policy = MakeGpuPolicy(seed, "float32");
  auto& module = policy->module();
  ModelRunnerOptions ro;
  ro.num_slots = 8;
  ro.num_pages = 512;
  ro.page_size = 16;
  ro.max_model_len = 4096;  // 256-token partitions in the paged decode attention
  // bf16 with the kernels replaying CUDA graphs, the same kernels run eagerly, bf16 with
  // the torch ops, and the FP32 torch ops as the oracle.
  ModelRunner fast(module, ro);
  ModelRunnerOptions eager_options = ro;
  eager_options.cuda_graphs = false;
  ModelRunner eager(module, eager_options);
  ModelRunnerOptions torch_options = ro;
  torch_options.allow_cuda_kernels = false;
  ModelRunner ref(module, torch_options);
  ModelRunner oracle(oracle_policy->module(), ro);
  ASSERT_TRUE(fast.uses_cuda_kernels() && fast.uses_cuda_graphs());
  ASSERT_TRUE(eager.uses_cuda_kernels() && !eager.uses_cuda_graphs());
  ASSERT_FALSE(ref.uses_cuda_kernels());
  ASSERT_FALSE(oracle.uses_cuda_kernels());

  // Ragged prompts around the kernels' block sizes and the attention's partitions, in
  // shuffled slots.
  const std::vector<int> lengths = {1, 31, 64, 97, 200, 3, 2100};
  std::vector<int64_t> slots = {5, 0, 7, 2, 6, 1, 3};
  PagedKvCache kv(ro.num_pages, ro.page_size);
  std::vector<PageTable> tables(lengths.size());
  std::vector<RunnerSequence> seqs(lengths.size());
  const int kSteps = 6;
  for (size_t i = 0; i < lengths.size(); ++i) {
    ASSERT_TRUE(kv.Reserve(tables[i], lengths[i] + kSteps));
    seqs[i].slot = slots[i];
    seqs[i].pages = &tables[i];
    seqs[i].tokens = RandomTokens(rng, lengths[i]);
  }
  // The kernels may not move the bf16 model further from FP32 than the torch ops do.
  auto check = [&](const torch::Tensor& f, const torch::Tensor& r, const torch::Tensor& o,
                   const std::string& what) {
    const double kernel_err = RelativeError(f, o), torch_err = RelativeError(r, o);
    std::printf("%s logits vs FP32: bf16 kernels %.3e, bf16 torch ops %.3e; kernels vs torch ops "
                "%.3e\n",
                what.c_str(), kernel_err, torch_err, RelativeError(f, r));
    EXPECT_FALSE(torch::isnan(f).any().item<bool>()) << what;
    EXPECT_LT(kernel_err, std::max(1.5 * torch_err, 2e-2)) << what;
  };
  auto prefill = fast.Prefill(seqs);
  eager.Prefill(seqs);
  check(prefill, ref.Prefill(seqs), oracle.Prefill(seqs), "prefill");
  for (int step = 0; step < kSteps; ++step) {
    // Half-way the batch shrinks to three sequences: another graph bucket, padded rows.
    if (step == kSteps / 2) seqs.resize(3);
    for (size_t i = 0; i < seqs.size(); ++i) {
      seqs[i].position = lengths[i] + step;
      seqs[i].tokens = RandomTokens(rng, 1);
    }
    const std::string what = "decode step " + std::to_string(step);
    auto graphed = fast.Decode(seqs).clone();
    auto eager_logits = eager.Decode(seqs);
    auto ref_logits = ref.Decode(seqs);
    check(graphed, ref_logits, oracle.Decode(seqs), what);
    // Replaying the captured step computes what launching it op by op does.
    const double replay_err = RelativeError(graphed, eager_logits);
    std::printf("%s: graph replay vs eager kernels %.3e\n", what.c_str(), replay_err);
    EXPECT_LT(replay_err, 2e-3) << what;
  }
  EXPECT_EQ(fast.num_cuda_graphs(), 2);  // buckets of 8 and 4
}

// The grouped expert GEMM against one torch matmul per group, shared and per-group inputs.
TEST(EngineGpuTest, GroupedLinearMatchesPerGroupMatmul) {
  torch::InferenceMode guard;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  torch::manual_seed(seed);
  auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  for (auto [G, T, K, N] : std::vector<std::array<int64_t, 4>>{{8, 5, 256, 384}, {3, 64, 128, 64}}) {
    std::vector<torch::Tensor> weights;
    std::vector<int64_t> addresses;
    for (int64_t g = 0; g < G; ++g) {
      weights.push_back(torch::randn({N, K}, bf16));
      addresses.push_back(reinterpret_cast<int64_t>(weights.back().data_ptr()));
    }
    auto ptrs = torch::tensor(addresses, torch::kInt64).to(torch::kCUDA);
    auto shared = torch::randn({T, K}, bf16);
    auto grouped = torch::randn({G, T, K}, bf16);
    auto out_shared = GroupedLinearCuda(shared, ptrs, N);
    auto out_grouped = GroupedLinearCuda(grouped, ptrs, N);
    for (int64_t g = 0; g < G; ++g) {
      auto w = weights[g].to(torch::kFloat32);
      auto ref_shared = torch::matmul(shared.to(torch::kFloat32), w.t());
      auto ref_grouped = torch::matmul(grouped[g].to(torch::kFloat32), w.t());
      EXPECT_LT(RelativeError(out_shared[g], ref_shared), 1e-2) << "group " << g;
      EXPECT_LT(RelativeError(out_grouped[g], ref_grouped), 1e-2) << "group " << g;
    }
  }
}

// The routing kernel's adapters against the policy's router (torch ops on CUDA) on the
// same FP32 logits, and the MoE block routed by the kernel, as the prefill runs it, against
// the block's own forward. Random bf16 inputs, so the logits of a token are distinct.
TEST(EngineGpuTest, MoeRoutingKernelMatchesThePolicysRouter) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  torch::manual_seed(seed);
  auto bf16 = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA);
  for (auto [T, E, k] : std::vector<std::array<int64_t, 3>>{
           {1, 8, 2}, {7, 32, 1}, {600, 8, 2}, {4099, 32, 8}, {33, 256, 8}}) {
    SCOPED_TRACE("T " + std::to_string(T) + " E " + std::to_string(E) + " k " + std::to_string(k));
    ModelConfig c = GpuConfig();
    c.intermediate_size = 64;
    c.num_local_experts = E;
    c.num_experts_per_tok = k;
    SparseMoe moe(c);
    moe->to(torch::kCUDA, torch::kBFloat16);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : moe->parameters()) p.normal_(0, 0.05);
    }
    torch::InferenceMode guard;
    ASSERT_TRUE(MoeRoutingSupported(E, k));
    auto x = torch::randn({T, c.hidden_size}, bf16);
    auto logits = moe->RouterLogits(x);
    auto [probs, top_w, top_i] = moe->Route(x);
    auto [w, ids] = MoeRouteCuda(logits, k);
    ASSERT_EQ(ids.scalar_type(), torch::kInt64);
    EXPECT_TRUE(torch::equal(ids, top_i));
    EXPECT_LT(((w - top_w).abs() / top_w).max().item<double>(), 1e-5);
    // The dense combine rows hold the same weights at the same experts, zeros elsewhere.
    auto combine = MoeCombineWeightsCuda(logits, k);
    EXPECT_TRUE(torch::equal(combine.gather(1, ids), w));
    EXPECT_LT((combine - moe->CombineWeights(x)).abs().max().item<double>(), 1e-5);
    EXPECT_LT((combine.sum(1) - 1).abs().max().item<double>(), 1e-5);
    const double moe_err = RelativeError(moe->ForwardRouted(x, w, ids), moe->forward(x, 0).first);
    std::printf("T %lld E %lld k %lld: kernel-routed MoE vs the block's forward %.3e\n",
                static_cast<long long>(T), static_cast<long long>(E), static_cast<long long>(k),
                moe_err);
    EXPECT_LT(moe_err, 1e-3);
  }
  auto logits = torch::randn({3, 8}, torch::TensorOptions().device(torch::kCUDA));
  EXPECT_FALSE(MoeRoutingSupported(8, 9));
  EXPECT_FALSE(MoeRoutingSupported(257, 2));
  EXPECT_THROW(MoeRouteCuda(logits, 9), c10::Error);
  EXPECT_THROW(MoeCombineWeightsCuda(logits.to(torch::kBFloat16), 2), c10::Error);
}

struct Generated {
  std::vector<GenerationRequest> requests;
  std::vector<GenerationResult> results;
};

// `num` random prompts; with `vary`, each request's max_new_tokens is drawn from
// [max_new_tokens / 8, max_new_tokens], so sequences finish at different steps.
std::vector<GenerationRequest> RandomRequests(std::mt19937& rng, double temperature, int num,
                                              int max_new_tokens, bool vary) {
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < num; ++i) {
    GenerationRequest r;
    r.id = std::to_string(i);
    r.prompt = RandomTokens(rng, 1 + static_cast<int>(rng() % 150));
    r.params.temperature = temperature;
    r.params.seed = rng();
    r.params.max_new_tokens =
        vary ? max_new_tokens / 8 + static_cast<int>(rng() % (max_new_tokens - max_new_tokens / 8 + 1))
             : max_new_tokens;
    r.params.early_stop_window = 0;
    requests.push_back(r);
  }
  return requests;
}

EngineOptions GpuEngineOptions(int64_t max_num_seqs) {
  EngineOptions opts;
  opts.page_size = 16;
  opts.max_num_seqs = max_num_seqs;
  opts.kv_cache_bytes = int64_t{64} << 20;
  return opts;
}

Generated GenerateOnGpu(PolicyModel* policy, std::mt19937& rng, double temperature, int num,
                        int max_new_tokens, int64_t max_num_seqs = 16, bool vary = false) {
  auto engine = Engine::Create(policy, GpuEngineOptions(max_num_seqs));
  EXPECT_TRUE(engine.ok()) << engine.status();
  Generated g;
  g.requests = RandomRequests(rng, temperature, num, max_new_tokens, vary);
  g.results = (*engine)->Generate(g.requests);
  return g;
}

// Every greedy token equals the argmax of one full forward over prompt + output wherever
// the top two candidates are clearly apart.
void ExpectGreedyEqualsFullForward(PolicyModel* policy, const Generated& g) {
  auto& module = policy->module();
  torch::InferenceMode guard;
  const double kMargin = 0.1;  // nats between the top two logprobs
  int64_t compared = 0, matched = 0, total = 0, matched_all = 0;
  for (size_t i = 0; i < g.requests.size(); ++i) {
    ASSERT_TRUE(g.results[i].status.ok()) << g.results[i].status;
    const auto& sample = g.results[i].samples.at(0);
    ASSERT_EQ(static_cast<int64_t>(sample.tokens.size()), g.requests[i].params.max_new_tokens);
    std::vector<int64_t> seq(g.requests[i].prompt.begin(), g.requests[i].prompt.end());
    seq.insert(seq.end(), sample.tokens.begin(), sample.tokens.end());
    auto tokens = torch::tensor(seq, torch::kInt64).to(torch::kCUDA);
    auto hidden = module->Forward(tokens, PackedLayout::FromLengths({tokens.size(0)})).hidden;
    const int64_t P = static_cast<int64_t>(g.requests[i].prompt.size());
    auto logp = torch::log_softmax(module->Logits(hidden.narrow(0, P - 1, sample.tokens.size())), -1)
                    .to(torch::kCPU);
    auto [top, top_i] = logp.topk(2, -1);
    for (size_t t = 0; t < sample.tokens.size(); ++t) {
      ++total;
      matched_all += top_i[t][0].item<int64_t>() == sample.tokens[t] ? 1 : 0;
      const float margin = top[t][0].item<float>() - top[t][1].item<float>();
      if (margin < kMargin) continue;
      ++compared;
      matched += top_i[t][0].item<int64_t>() == sample.tokens[t] ? 1 : 0;
    }
  }
  std::printf("greedy tokens: %lld of %lld with a top-2 margin >= %.2f nats, %lld of those equal "
              "the full forward's argmax (%lld of all %lld)\n",
              static_cast<long long>(compared), static_cast<long long>(total), kMargin,
              static_cast<long long>(matched), static_cast<long long>(matched_all),
              static_cast<long long>(total));
  EXPECT_GT(compared, total / 2);
  EXPECT_EQ(matched, compared);
}

TEST(EngineGpuTest, GreedyEqualsArgmaxOfFullForwardWhereTheMarginIsClear) {
  std::mt19937 rng(std::random_device{}());
  auto policy = MakeGpuPolicy(rng());
  auto g = GenerateOnGpu(policy.get(), rng, /*temperature=*/0, /*num=*/12, /*max_new_tokens=*/40);
  ExpectGreedyEqualsFullForward(policy.get(), g);
}

// At most 3 sequences at a time and outputs of different lengths: requests are admitted
// while others decode, so prefills (on their own stream) overlap running decode steps.
TEST(EngineGpuTest, GreedyWithStaggeredAdmissionEqualsArgmaxOfFullForward) {
  std::mt19937 rng(std::random_device{}());
  auto policy = MakeGpuPolicy(rng());
  auto g = GenerateOnGpu(policy.get(), rng, /*temperature=*/0, /*num=*/10, /*max_new_tokens=*/40,
                         /*max_num_seqs=*/3, /*vary=*/true);
  ExpectGreedyEqualsFullForward(policy.get(), g);
}

// Requests admitted while others decode (3 sequences at a time, outputs of different
// lengths), so prefills run on the prefill stream beside decode steps of the running batch.
// The outputs are bit for bit those of the one-stream order (the same kernels on the same
// inputs), also when the caller itself runs on a pool stream; and each request's greedy
// output is the one it gets alone, up to a near tie between the two runs (other batch
// shapes round differently), past which their contexts differ.
TEST(EngineGpuTest, PrefillStreamKeepsOutputsUnderStaggeredAdmission) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  auto policy = MakeGpuPolicy(rng());
  const auto requests = RandomRequests(rng, /*temperature=*/0, /*num=*/12, /*max_new_tokens=*/40,
                                       /*vary=*/true);
  const EngineOptions overlap_options = GpuEngineOptions(/*max_num_seqs=*/3);
  EngineOptions serial_options = overlap_options;
  serial_options.prefill_stream = false;
  auto run = [&](const EngineOptions& options, EngineStats* stats) {
    auto engine = Engine::Create(policy.get(), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    auto results = (*engine)->Generate(requests);
    *stats = (*engine)->stats();
    return results;
  };
  EngineStats overlap_stats, serial_stats, pool_stats;
  const auto overlapped = run(overlap_options, &overlap_stats);
  const auto serial = run(serial_options, &serial_stats);
  const auto on_pool = [&] {
    c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromPool());
    return run(overlap_options, &pool_stats);
  }();
  std::printf("%lld prefill steps, %lld of them beside a decode step (%lld on a pool stream), "
              "%lld decode steps\n",
              static_cast<long long>(overlap_stats.prefill_steps),
              static_cast<long long>(overlap_stats.overlapped_prefill_steps),
              static_cast<long long>(pool_stats.overlapped_prefill_steps),
              static_cast<long long>(overlap_stats.decode_steps));
  EXPECT_GT(overlap_stats.overlapped_prefill_steps, 0);
  EXPECT_EQ(pool_stats.overlapped_prefill_steps, overlap_stats.overlapped_prefill_steps);
  EXPECT_EQ(serial_stats.overlapped_prefill_steps, 0);
  EXPECT_EQ(serial_stats.prefill_steps, overlap_stats.prefill_steps);
  EXPECT_EQ(serial_stats.decode_steps, overlap_stats.decode_steps);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_TRUE(serial[i].status.ok()) << serial[i].status;
    const auto& want = serial[i].samples.at(0);
    ASSERT_EQ(static_cast<int64_t>(want.tokens.size()), requests[i].params.max_new_tokens);
    for (const auto* got : {&overlapped[i], &on_pool[i]}) {
      ASSERT_TRUE(got->status.ok()) << got->status;
      EXPECT_EQ(got->samples.at(0).tokens, want.tokens);
      EXPECT_EQ(got->samples.at(0).logprobs, want.logprobs);  // bit for bit
    }
  }

  // Alone, on an engine with the prefill stream (its prefills have no decode beside them).
  // Where the two runs pick different tokens, each picked its own argmax, so the two picks'
  // logprobs differ by no more than the runs' roundings do.
  const double kTolerance = 0.1;  // nats
  auto engine = Engine::Create(policy.get(), overlap_options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  int64_t compared = 0, total = 0, identical = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    auto alone = (*engine)->Generate({requests[i]});
    ASSERT_TRUE(alone[0].status.ok()) << alone[0].status;
    const auto& a = alone[0].samples.at(0);
    const auto& b = overlapped[i].samples.at(0);
    ASSERT_EQ(a.tokens.size(), b.tokens.size());
    total += static_cast<int64_t>(a.tokens.size());
    size_t t = 0;
    for (; t < a.tokens.size(); ++t) {
      ++compared;
      EXPECT_NEAR(a.logprobs[t], b.logprobs[t], kTolerance) << "token " << t;
      if (a.tokens[t] != b.tokens[t]) break;
    }
    identical += t == a.tokens.size() ? 1 : 0;
  }
  EXPECT_EQ((*engine)->stats().overlapped_prefill_steps, 0);
  std::printf("alone vs batched: %lld of %lld requests identical, %lld of %lld tokens compared "
              "(up to the first near tie)\n",
              static_cast<long long>(identical), static_cast<long long>(requests.size()),
              static_cast<long long>(compared), static_cast<long long>(total));
  EXPECT_GE(compared, total / 4);
}

// The decode step's fused epilogues (the lightning gate with its norm, the MoE weighted sum
// with the residual sum) against the separate ops they replace: the same roundings but for
// the MoE sum's order, so each request's greedy output is the same up to a near tie, past
// which their contexts differ.
TEST(EngineGpuTest, FusedDecodeEpiloguesMatchTheSeparateOps) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  auto policy = MakeGpuPolicy(rng());
  const auto requests = RandomRequests(rng, /*temperature=*/0, /*num=*/12, /*max_new_tokens=*/40,
                                       /*vary=*/true);
  EngineOptions fused_options = GpuEngineOptions(/*max_num_seqs=*/12);
  EngineOptions separate_options = fused_options;
  separate_options.fuse_decode_epilogues = false;
  auto run = [&](const EngineOptions& options) {
    auto engine = Engine::Create(policy.get(), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return (*engine)->Generate(requests);
  };
  const auto fused = run(fused_options);
  const auto separate = run(separate_options);
  const double kTolerance = 0.05;  // nats
  int64_t compared = 0, total = 0;
  double sum_diff = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    ASSERT_TRUE(fused[i].status.ok()) << fused[i].status;
    ASSERT_TRUE(separate[i].status.ok()) << separate[i].status;
    const auto& a = fused[i].samples.at(0);
    const auto& b = separate[i].samples.at(0);
    ASSERT_EQ(a.tokens.size(), b.tokens.size());
    total += static_cast<int64_t>(a.tokens.size());
    for (size_t t = 0; t < a.tokens.size(); ++t) {
      ++compared;
      EXPECT_NEAR(a.logprobs[t], b.logprobs[t], kTolerance) << "token " << t;
      sum_diff += std::fabs(a.logprobs[t] - b.logprobs[t]);
      if (a.tokens[t] != b.tokens[t]) break;
    }
  }
  std::printf("fused vs separate epilogues: %lld of %lld tokens compared, mean |logprob diff| "
              "%.2e\n", static_cast<long long>(compared), static_cast<long long>(total),
              sum_diff / static_cast<double>(std::max<int64_t>(compared, 1)));
  EXPECT_GE(compared, total / 2);
  EXPECT_LT(sum_diff / static_cast<double>(std::max<int64_t>(compared, 1)), 5e-3);
}

// The runner never prefills on the caller's stream, also when the caller moves onto the
// stream it prefilled on; its logits, and a decode step reading the slots it wrote right
// after it, are bit for bit those of a runner that prefills on the caller's stream.
TEST(EngineGpuTest, PrefillStreamIsNeverTheCallersStream) {
  std::mt19937 rng(std::random_device{}());
  auto policy = MakeGpuPolicy(rng());
  ModelRunnerOptions ro;
  ro.num_slots = 4;
  ro.num_pages = 64;
  ro.page_size = 16;
  ro.max_model_len = 512;
  ModelRunner runner(policy->module(), ro);
  ModelRunnerOptions serial_options = ro;
  serial_options.prefill_stream = false;
  ModelRunner serial(policy->module(), serial_options);
  ASSERT_TRUE(runner.uses_prefill_stream());
  ASSERT_FALSE(serial.uses_prefill_stream());
  EXPECT_FALSE(runner.prefill_stream().has_value());

  const std::vector<int> lengths = {5, 70, 130};
  PagedKvCache kv(ro.num_pages, ro.page_size);
  std::vector<PageTable> tables(lengths.size());
  std::vector<RunnerSequence> seqs(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    ASSERT_TRUE(kv.Reserve(tables[i], lengths[i] + 1));
    seqs[i].slot = static_cast<int64_t>(i) + 1;
    seqs[i].pages = &tables[i];
    seqs[i].tokens = RandomTokens(rng, lengths[i]);
  }
  auto want = serial.Prefill(seqs);
  auto got = runner.Prefill(seqs);
  ASSERT_TRUE(runner.prefill_stream().has_value());
  const c10::Stream first = *runner.prefill_stream();
  EXPECT_NE(first, c10::cuda::getCurrentCUDAStream().unwrap());
  EXPECT_TRUE(torch::equal(got, want));
  {
    c10::cuda::CUDAStreamGuard guard{c10::cuda::CUDAStream(first)};
    auto again = runner.Prefill(seqs);
    ASSERT_TRUE(runner.prefill_stream().has_value());
    EXPECT_NE(*runner.prefill_stream(), first);
    EXPECT_TRUE(torch::equal(again, want));
  }
  for (size_t i = 0; i < lengths.size(); ++i) {
    seqs[i].tokens = RandomTokens(rng, 1);
    seqs[i].position = lengths[i];
  }
  EXPECT_TRUE(torch::equal(runner.Decode(seqs), serial.Decode(seqs)));
}

TEST(EngineGpuTest, EngineLogprobsTrackTrainingPathLogprobs) {
  std::mt19937 rng(std::random_device{}());
  auto policy = MakeGpuPolicy(rng());
  auto g = GenerateOnGpu(policy.get(), rng, /*temperature=*/1.0, /*num=*/12, /*max_new_tokens=*/48);
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < g.requests.size(); ++i) {
    ASSERT_TRUE(g.results[i].status.ok()) << g.results[i].status;
    std::vector<int32_t> s = g.requests[i].prompt;
    const auto& toks = g.results[i].samples.at(0).tokens;
    s.insert(s.end(), toks.begin(), toks.end());
    seqs.push_back(s);
  }
  auto train = policy->TokenLogprobs(seqs);
  ASSERT_TRUE(train.ok()) << train.status();
  std::vector<double> a, b;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto& sample = g.results[i].samples[0];
    const size_t P = g.requests[i].prompt.size();
    for (size_t t = 0; t < sample.tokens.size(); ++t) {
      a.push_back(sample.logprobs[t]);
      b.push_back((*train)[i][P + t]);
    }
  }
  const double n = static_cast<double>(a.size());
  double ma = 0, mb = 0, mad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i]) && std::isfinite(b[i])) << "token " << i;
    ma += a[i] / n;
    mb += b[i] / n;
    mad += std::abs(a[i] - b[i]) / n;
  }
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sab += (a[i] - ma) * (b[i] - mb);
    saa += (a[i] - ma) * (a[i] - ma);
    sbb += (b[i] - mb) * (b[i] - mb);
  }
  const double pearson = sab / std::sqrt(saa * sbb);
  std::printf("engine vs training-path logprobs over %zu sampled tokens: Pearson %.6f, mean |diff| "
              "%.4e nats, logprob std %.3f\n",
              a.size(), pearson, mad, std::sqrt(saa / n));
  EXPECT_GT(std::sqrt(saa / n), 0.3) << "logprobs too uniform to test a correlation";
  EXPECT_GE(pearson, 0.999);
}

// log_softmax(x / T)[token] in double, x / T rounded to FP32 (T = 1 when greedy).
double LogSoftmaxAt(const float* x, int64_t vocab, double temperature, int64_t token) {
  const float t = static_cast<float>(temperature) > 0.0f ? static_cast<float>(temperature) : 1.0f;
  double m = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, static_cast<double>(x[i] / t));
  double s = 0.0;
  for (int64_t i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(x[i] / t) - m);
  return static_cast<double>(x[token] / t) - m - std::log(s);
}

// SampleTokens on CUDA logits runs the fused kernel: the oracle's tokens wherever its
// decisions are clear of the kernel's ~1e-7 rounding, and the CPU sampler's (torch ops,
// FP32 masses) wherever they are clear of its ~1e-6; logprobs within 1e-5. Mixed rows in
// one batch, FP32 and bf16 logits; SampleTokensCuda's two outputs view its one buffer.
TEST(EngineGpuTest, CudaSamplerMatchesOracleAndCpuSampler) {
  torch::InferenceMode guard;
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  torch::manual_seed(seed);
  const int64_t R = 48, V = 50000;
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  std::vector<SamplerRow> rows;
  for (int64_t r = 0; r < R; ++r) {
    SamplerRow row;
    row.temperature = r % 6 == 0 ? 0.0 : 0.4 + 1.2 * u01(rng);
    if (r % 6 == 1) row.top_k = 1 + static_cast<int64_t>(rng() % 40);
    if (r % 6 == 2) row.top_p = 0.1 + 0.8 * u01(rng);
    if (r % 6 == 3) {
      row.top_k = 1 + static_cast<int64_t>(rng() % 2000);
      row.top_p = 0.1 + 0.8 * u01(rng);
    }
    if (r % 6 == 4) row.top_p = 1e-6;
    row.uniform = u01(rng);
    rows.push_back(row);
  }
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(dtype == torch::kFloat32 ? "float32 logits" : "bfloat16 logits");
    auto logits = (torch::randn({R, V}, torch::dtype(torch::kFloat32).device(torch::kCUDA)) * 3)
                      .to(dtype);
    auto host_logits = logits.to(torch::kCPU, torch::kFloat32).contiguous();
    const auto gpu = SampleTokens(logits, rows);
    const auto cpu = SampleTokens(host_logits, rows);
    int64_t compared = 0;
    for (int64_t r = 0; r < R; ++r) {
      SCOPED_TRACE("row " + std::to_string(r));
      const float* x = host_logits.data_ptr<float>() + r * V;
      SamplingReferenceRow want_row;
      want_row.temperature = rows[r].temperature;
      want_row.top_p = rows[r].top_p;
      want_row.top_k = rows[r].top_k;
      want_row.uniform = rows[r].uniform;
      const auto want = ReferenceSample(x, V, want_row);
      ASSERT_GE(gpu.tokens[r], 0);
      ASSERT_LT(gpu.tokens[r], V);
      const double margin = std::min(want.top_p_margin, want.draw_margin);
      if (margin > 2e-7) {
        ++compared;
        EXPECT_EQ(gpu.tokens[r], want.token) << "margin " << margin;
      }
      if (margin > 2e-5) {
        EXPECT_EQ(cpu.tokens[r], want.token) << "margin " << margin;
      }
      const double lp = LogSoftmaxAt(x, V, rows[r].temperature, gpu.tokens[r]);
      EXPECT_NEAR(gpu.logprobs[r], lp, 1e-5 * std::max(1.0, std::fabs(lp)));
    }
    EXPECT_GE(compared, R / 2);
    // The adapter itself: one buffer, ids then logprobs, the same results.
    auto params = torch::empty({R, 4}, torch::kFloat32);
    for (int64_t r = 0; r < R; ++r) {
      params[r][0] = rows[r].temperature;
      params[r][1] = rows[r].top_p;
      params[r][2] = static_cast<double>(rows[r].top_k > 0 ? std::min(rows[r].top_k, V) : V);
      params[r][3] = rows[r].uniform;
    }
    auto direct = SampleTokensCuda(logits, params.to(torch::kCUDA));
    ASSERT_EQ(direct.packed.numel(), 12 * R);
    EXPECT_EQ(direct.tokens.data_ptr(), direct.packed.data_ptr());
    EXPECT_EQ(static_cast<char*>(direct.logprobs.data_ptr()),
              static_cast<char*>(direct.packed.data_ptr()) + 8 * R);
    auto tokens = direct.tokens.to(torch::kCPU);
    auto logprobs = direct.logprobs.to(torch::kCPU);
    for (int64_t r = 0; r < R; ++r) {
      EXPECT_EQ(tokens[r].item<int64_t>(), gpu.tokens[r]) << "row " << r;
      EXPECT_EQ(logprobs[r].item<float>(), gpu.logprobs[r]) << "row " << r;
    }
  }
}

}  // namespace
}  // namespace lightrl
