// The cost of numerics.batch_invariant: one RL step's generation (engine tokens/s) and
// learner update (TrainRl time) of a random model, the mode off and on, and the
// train/inference mismatch each gives.
//   batch_invariant_bench [--dtype float32|bfloat16] [--prompts 8] [--n 4] [--new-tokens 32]
//                         [--repeats 3] [--threads 0] [--device cpu|cuda]
//                         [--model small|bench] [--kv-mb 256] [--profile-learner 0]
// --model small: 4 layers, hidden 256 (the CPU figures); bench: the 508M bench model of the
// GPU figures (hidden 1024, 8 layers 7 lightning + 1 softmax, 8 heads x 128, 8 experts
// top-2, FFN 2048, vocab 32000). --kv-mb sizes the softmax layers' KV cache: small enough,
// and sequences are preempted and re-prefilled. Prints one JSON line per mode: tokens/s,
// learner step seconds (median of --repeats), max |engine logprob - learner logprob| and
// the engine's preemptions. --profile-learner K > 0: the last repeat's learner update of
// each mode runs under the torch profiler, and its K busiest CPU ops (inclusive time) and
// K busiest CUDA kernels go to stderr as "profile ..." lines, with the kernels' total.
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"
#include "rl/learner.h"

namespace lightrl {
namespace {

// Four layers (three lightning, one softmax), hidden 256, 8 experts of top-2, vocab 4096.
ModelConfig BenchConfig() {
  ModelConfig c;
  c.vocab_size = 4096;
  c.hidden_size = 256;
  c.intermediate_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.rotary_dim = 32;
  c.num_local_experts = 8;
  c.num_experts_per_tok = 2;
  c.block_size = 64;
  c.max_position_embeddings = 4096;
  c.layer_kinds = {LayerKind::kLightning, LayerKind::kLightning, LayerKind::kSoftmax,
                   LayerKind::kLightning};
  return c;
}

ModelConfig BenchModelConfig() {
  ModelConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 1024;
  c.intermediate_size = 2048;
  c.num_hidden_layers = 8;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 128;
  c.rotary_dim = 64;
  c.num_local_experts = 8;
  c.num_experts_per_tok = 2;
  c.block_size = 256;
  c.max_position_embeddings = 131072;
  c.layer_kinds.assign(8, LayerKind::kLightning);
  c.layer_kinds[7] = LayerKind::kSoftmax;
  return c;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

namespace profiler = torch::autograd::profiler;

void StartProfile(bool cuda) {
  using torch::profiler::impl::ActivityType;
  std::set<ActivityType> activities{ActivityType::CPU};
  if (cuda) activities.insert(ActivityType::CUDA);
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  profiler::prepareProfiler(config, activities);
  profiler::enableProfiler(config, activities);
}

// Each device's events by name: count and summed duration, the `top` longest per device.
void PrintProfile(bool mode, double wall_s, int64_t top) {
  std::unique_ptr<profiler::ProfilerResult> result = profiler::disableProfiler();
  std::map<std::pair<int, std::string>, std::pair<int64_t, double>> by_name;
  std::map<int, double> total_ms;
  for (const profiler::KinetoEvent& e : result->events()) {
    const int device = static_cast<int>(e.deviceType());
    auto& [count, ms] = by_name[{device, e.name()}];
    ++count;
    ms += static_cast<double>(e.durationNs()) / 1e6;
    total_ms[device] += static_cast<double>(e.durationNs()) / 1e6;
  }
  std::fprintf(stderr, "profile batch_invariant=%d learner step %.1f ms, CUDA events %.1f ms\n",
               mode ? 1 : 0, wall_s * 1e3, total_ms[static_cast<int>(c10::DeviceType::CUDA)]);
  for (c10::DeviceType device : {c10::DeviceType::CPU, c10::DeviceType::CUDA}) {
    std::vector<std::pair<double, std::pair<std::string, int64_t>>> rows;
    for (const auto& [key, value] : by_name) {
      if (key.first == static_cast<int>(device)) rows.push_back({value.second, {key.second, value.first}});
    }
    std::sort(rows.rbegin(), rows.rend());
    for (size_t i = 0; i < rows.size() && static_cast<int64_t>(i) < top; ++i) {
      std::fprintf(stderr, "profile batch_invariant=%d %s %9.2f ms %6lld x %.100s\n", mode ? 1 : 0,
                   device == c10::DeviceType::CPU ? "cpu " : "cuda", rows[i].first,
                   static_cast<long long>(rows[i].second.second), rows[i].second.first.c_str());
    }
  }
}

int Main(int argc, char** argv) {
  std::string dtype = "float32", device = "cpu", model = "small";
  int64_t prompts = 8, n = 4, new_tokens = 32, repeats = 3, threads = 0, kv_mb = 256;
  int64_t profile_top = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    int64_t* target = flag == "--prompts"      ? &prompts
                      : flag == "--n"          ? &n
                      : flag == "--new-tokens" ? &new_tokens
                      : flag == "--repeats"    ? &repeats
                      : flag == "--threads"    ? &threads
                      : flag == "--kv-mb"      ? &kv_mb
                      : flag == "--profile-learner" ? &profile_top
                                               : nullptr;
    if (flag == "--dtype") {
      dtype = value;
    } else if (flag == "--device") {
      device = value;
    } else if (flag == "--model" && (value == "small" || value == "bench")) {
      model = value;
    } else if (target == nullptr || !absl::SimpleAtoi(value, target)) {
      std::fprintf(stderr, "batch_invariant_bench: bad flag %s %s\n", flag.c_str(), value.c_str());
      return 2;
    }
  }
  if (threads > 0) torch::set_num_threads(static_cast<int>(threads));
  PolicyOptions popts;
  popts.dtype = dtype;
  popts.device = device;
  const ModelConfig config = model == "bench" ? BenchModelConfig() : BenchConfig();
  for (bool mode : {false, true}) {
    auto policy = PolicyModel::Create(config, 7, popts);
    if (!policy.ok()) {
      std::fprintf(stderr, "batch_invariant_bench: %s\n", policy.status().ToString().c_str());
      return 1;
    }
    EngineOptions eopts;
    eopts.batch_invariant = mode;
    eopts.max_num_seqs = prompts * n;
    eopts.kv_cache_bytes = kv_mb << 20;
    auto engine = Engine::Create(policy->get(), eopts);
    if (!engine.ok()) {
      std::fprintf(stderr, "batch_invariant_bench: %s\n", engine.status().ToString().c_str());
      return 1;
    }
    std::mt19937 rng(11);
    std::vector<GenerationRequest> reqs(prompts);
    for (int64_t i = 0; i < prompts; ++i) {
      reqs[i].id = "p" + std::to_string(i);
      const int64_t len = 16 + static_cast<int64_t>(rng() % 48);
      for (int64_t t = 0; t < len; ++t) {
        reqs[i].prompt.push_back(static_cast<int32_t>(rng() % config.vocab_size));
      }
      reqs[i].params.temperature = 1.0;
      reqs[i].params.max_new_tokens = new_tokens;
      reqs[i].params.n = n;
      reqs[i].params.seed = i;
      reqs[i].params.early_stop_window = 0;
      reqs[i].params.stop_token_ids = {};
    }
    std::vector<double> gen_s, step_s;
    int64_t tokens = 0;
    double mismatch = 0;
    for (int64_t r = 0; r < repeats; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      auto results = (*engine)->Generate(reqs);
      gen_s.push_back(Seconds(t0));
      std::vector<TrainSample> batch;
      tokens = 0;
      for (size_t i = 0; i < results.size(); ++i) {
        for (size_t k = 0; k < results[i].samples.size(); ++k) {
          TrainSample s;
          s.id = results[i].id + "/" + std::to_string(k);
          s.prompt = reqs[i].prompt;
          s.response = results[i].samples[k].tokens;
          s.rollout_logprobs = results[i].samples[k].logprobs;
          s.advantage = (k % 2 == 0) ? 1.0 : -1.0;
          tokens += static_cast<int64_t>(s.response.size());
          batch.push_back(std::move(s));
        }
      }
      LearnerOptions lopts;
      lopts.batch_invariant = mode;
      lopts.optimizer.lr = 1e-6;
      auto learner = Learner::Create(policy->get(), lopts);
      if (!learner.ok()) return 1;
      const bool profile = profile_top > 0 && r + 1 == repeats;
      if (profile) StartProfile(device != "cpu");
      t0 = std::chrono::steady_clock::now();
      auto stats = (*learner)->TrainRl(batch);
      step_s.push_back(Seconds(t0));
      if (profile) PrintProfile(mode, step_s.back(), profile_top);
      if (!stats.ok()) {
        std::fprintf(stderr, "batch_invariant_bench: %s\n", stats.status().ToString().c_str());
        return 1;
      }
      mismatch = std::max(mismatch, stats->rollout_logprob_abs_diff_max);
    }
    std::printf(
        "{\"batch_invariant\": %s, \"dtype\": \"%s\", \"threads\": %d, \"samples\": %lld, "
        "\"generated_tokens\": %lld, \"engine_tokens_per_s\": %.1f, \"learner_step_s\": %.3f, "
        "\"logprob_abs_diff_max\": %.3g, \"device\": \"%s\", \"model\": \"%s\", "
        "\"preemptions\": %lld}\n",
        mode ? "true" : "false", dtype.c_str(), torch::get_num_threads(),
        static_cast<long long>(prompts * n), static_cast<long long>(tokens),
        static_cast<double>(tokens) / Median(gen_s), Median(step_s), mismatch, device.c_str(),
        model.c_str(), static_cast<long long>((*engine)->stats().preemptions));
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) { return lightrl::Main(argc, argv); }
