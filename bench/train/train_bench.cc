// Learner training throughput: the real Learner (packing, loss, backward, gradient
// clipping, FP32-master AdamW, and with N ranks the bucketed all-reduce) on random tokens,
// timed per update. One process per GPU; with RANK / WORLD_SIZE / LOCAL_RANK /
// MASTER_ADDR / MASTER_PORT set (torchrun's variables) the ranks form a data-parallel
// group and each trains --batch sequences of the global batch (--batch x world).
//   train_bench --model DIR [--batch 8] [--seq-len 2048] [--steps 10] [--warmup 3]
//               [--mode sft|rl] [--zero1 0] [--bucket-mb 25] [--peak-tflops 989]
//               [--grad-reduce-dtype float32|bfloat16]
//               [--device cuda|cpu]   (cpu: FP32, to try the bench on a small model)
//               [--profile PATH]      (rank 0 writes a Kineto trace of one more update)
// Prints one JSON line (rank 0): step times, tokens/s, model FLOPs per token and MFU.
// Model FLOPs count every matmul of the forward once (projections, the routed experts,
// the router, the LM head), lightning attention at its recurrent minimum (4 H d^2 a token)
// and softmax attention causally (2 H d T a token), times 3 for forward and backward.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <torch/csrc/autograd/profiler_kineto.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "policy/policy_model.h"
#include "rl/distributed.h"
#include "rl/learner.h"

namespace lightrl {
namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "train_bench: %s\n", what.c_str());
  return 2;
}

// Training FLOPs per token of a sequence of `len` tokens (see the header comment).
double TrainFlopsPerToken(const ModelConfig& c, int64_t len) {
  const double h = c.hidden_size, d = c.head_dim, H = c.num_attention_heads;
  const double kv = c.num_key_value_heads, f = c.intermediate_size;
  double fwd = 2 * h * c.vocab_size;  // LM head
  for (LayerKind kind : c.layer_kinds) {
    if (kind == LayerKind::kLightning) {
      fwd += 2 * (3 * H * d * h + H * d * h + H * d * h);  // qkv, output gate, out proj
      fwd += 4 * H * d * d;
    } else {
      fwd += 2 * (2 * H * d * h + 2 * kv * d * h);  // q, o, k, v
      fwd += 2 * H * d * static_cast<double>(len);  // q k^T and p v over len/2 on average
    }
    fwd += 2 * h * c.num_local_experts + 2 * 3 * h * f * c.num_experts_per_tok;
  }
  return 3 * fwd;
}

int Main(int argc, char** argv) {
  std::string model, mode = "sft", device_kind = "cuda", profile, grad_reduce_dtype = "float32";
  int64_t batch = 8, seq_len = 2048, steps = 10, warmup = 3, zero1 = 0;
  double bucket_mb = 25, peak_tflops = 989;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    int64_t* integer = flag == "--batch"     ? &batch
                       : flag == "--seq-len" ? &seq_len
                       : flag == "--steps"   ? &steps
                       : flag == "--warmup"  ? &warmup
                       : flag == "--zero1"   ? &zero1
                                             : nullptr;
    double* real = flag == "--bucket-mb" ? &bucket_mb : flag == "--peak-tflops" ? &peak_tflops : nullptr;
    if (flag == "--model") {
      model = value;
    } else if (flag == "--mode") {
      mode = value;
    } else if (flag == "--profile") {
      profile = value;
    } else if (flag == "--grad-reduce-dtype") {
      grad_reduce_dtype = value;
    } else if (flag == "--device") {
      device_kind = value;
    } else if (integer != nullptr) {
      if (!absl::SimpleAtoi(value, integer)) return Fail("bad value for " + flag + ": " + value);
    } else if (real != nullptr) {
      if (!absl::SimpleAtod(value, real)) return Fail("bad value for " + flag + ": " + value);
    } else {
      return Fail("unknown flag " + flag);
    }
  }
  if (model.empty()) return Fail("--model is required");
  if (mode != "sft" && mode != "rl") return Fail("--mode must be sft or rl, got " + mode);
  if (batch < 1 || seq_len < 2 || steps < 1 || warmup < 0) return Fail("bad sizes");

  auto dist = DistributedOptions::FromEnv({});
  if (!dist.ok()) return Fail(std::string(dist.status().message()));
  if (device_kind != "cuda" && device_kind != "cpu") return Fail("--device must be cuda or cpu");
  const std::string device =
      device_kind == "cpu" ? "cpu" : absl::StrCat("cuda:", dist->local_rank);
  std::unique_ptr<ProcessGroup> group;
  if (dist->enabled()) {
    auto g = ProcessGroup::Create(*dist, device);
    if (!g.ok()) return Fail(std::string(g.status().message()));
    group = std::move(*g);
  }
  PolicyOptions popts;
  popts.device = device;
  popts.dtype = device_kind == "cpu" ? "float32" : "bfloat16";
  auto policy = PolicyModel::Load(model, popts);
  if (!policy.ok()) return Fail(std::string(policy.status().message()));
  const ModelConfig& config = (*policy)->config();

  LearnerOptions lopts;
  lopts.optimizer.lr = 1e-6;
  lopts.max_tokens_per_forward = batch * seq_len;
  lopts.data_parallel.zero1 = zero1 != 0;
  lopts.data_parallel.bucket_mb = bucket_mb;
  lopts.data_parallel.grad_reduce_dtype = grad_reduce_dtype;
  auto learner = Learner::Create(policy->get(), lopts, group.get());
  if (!learner.ok()) return Fail(std::string(learner.status().message()));

  // The same global batch on every rank (each trains its share): one token of prompt,
  // the rest response, so the loss covers seq_len - 1 next-token predictions per sequence.
  const int64_t world = dist->world_size;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  std::uniform_real_distribution<float> logprob(-3.0f, -0.01f);
  std::vector<TrainSample> samples(batch * world);
  for (size_t i = 0; i < samples.size(); ++i) {
    TrainSample& s = samples[i];
    s.prompt = {token(rng)};
    s.response.resize(seq_len - 1);
    for (auto& t : s.response) t = token(rng);
    s.rollout_logprobs.resize(s.response.size());
    for (auto& lp : s.rollout_logprobs) lp = logprob(rng);
    s.advantage = i % 2 == 0 ? 1.0 : -1.0;
  }

  namespace prof = torch::profiler::impl;
  const bool profiling = !profile.empty() && dist->rank == 0;
  std::vector<double> times;
  double loss = 0;
  for (int64_t step = 0; step < warmup + steps + (profile.empty() ? 0 : 1); ++step) {
    const bool traced = profiling && step == warmup + steps;
    const prof::ProfilerConfig trace_config(prof::ProfilerState::KINETO);
    const std::set<prof::ActivityType> activities = {
        prof::ActivityType::CPU,
        device_kind == "cuda" ? prof::ActivityType::CUDA : prof::ActivityType::CPU};
    if (traced) {
      torch::autograd::profiler::prepareProfiler(trace_config, activities);
      torch::autograd::profiler::enableProfiler(trace_config, activities);
    }
    const auto start = std::chrono::steady_clock::now();
    auto stats = mode == "sft" ? (*learner)->TrainSft(samples) : (*learner)->TrainRl(samples);
    if (!stats.ok()) return Fail(std::string(stats.status().message()));
    if (traced) {
      torch::autograd::profiler::disableProfiler()->save(profile);
      continue;
    }
    // The stats are global figures, read back on the host: the update has finished.
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    loss = stats->loss;
    if (step >= warmup) times.push_back(secs);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const double tokens = static_cast<double>(batch * world * seq_len);
  const double flops = TrainFlopsPerToken(config, seq_len) * tokens;
  if (dist->rank == 0) {
    std::printf(
        "{\"bench\": \"train\", \"mode\": \"%s\", \"gpus\": %lld, \"batch_per_gpu\": %lld, "
        "\"seq_len\": %lld, \"zero1\": %s, \"grad_reduce_dtype\": \"%s\", \"steps\": %lld, "
        "\"step_ms_min\": %.2f, "
        "\"step_ms_median\": %.2f, \"step_ms_max\": %.2f, \"tok_s\": %.0f, \"tok_s_per_gpu\": %.0f, "
        "\"train_gflop_per_token\": %.4f, \"mfu\": %.4f, \"peak_tflops\": %.0f, \"loss\": %.4f}\n",
        mode.c_str(), static_cast<long long>(world), static_cast<long long>(batch),
        static_cast<long long>(seq_len), zero1 != 0 ? "true" : "false", grad_reduce_dtype.c_str(),
        static_cast<long long>(steps), 1e3 * times.front(), 1e3 * median, 1e3 * times.back(),
        tokens / median, tokens / median / world, TrainFlopsPerToken(config, seq_len) / 1e9,
        flops / median / (peak_tflops * 1e12 * world), peak_tflops, loss);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) { return lightrl::Main(argc, argv); }
