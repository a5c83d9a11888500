// In-process engine throughput, measured the way bench/engine/hf_bench.py measures
// transformers: load once; per batch size a warm-up generate of 8 tokens (which also
// captures that batch's CUDA graph), then one timed greedy generate of --new-tokens
// tokens per sequence from the same prompts (prefill included). Prints one JSON line per
// measurement.
//   engine_bench --model DIR --prompts-dir DIR [--batches 8,64,256] [--new-tokens 128]
//                [--device cuda] [--dtype bfloat16] [--enforce-eager 1] [--floor 1]
//                [--fuse-epilogues 0]   (EngineOptions::fuse_decode_epilogues, for comparison)
//                [--long-seqs N --long-tokens T]   (then one long run; prints a JSON line
//                                                    every --long-report tokens per sequence)
//                [--ttft 32768,81920]   (then time to first token of one prompt of each
//                                        length, beside its compute / bandwidth floor;
//                                        --ttft-runs N timed runs after one warm-up, 3)
// With --floor 1 (the default) each batch size is also timed at half the new tokens: the
// difference is the decode steps' time alone (prefill and the fixed cost cancel), printed
// per step beside the step's byte floor (bench/engine/decode_floor.h) and its share of it.
// prompts_<batch>.jsonl lines hold {"prompt_tokens": [...]} (hf_bench.py writes them).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/engine/decode_floor.h"
#include "common/json.h"
#include "inference_engine/engine.h"
#include "policy/policy_model.h"

namespace lightrl {
namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "engine_bench: %s\n", what.c_str());
  return 2;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::vector<GenerationRequest> Requests(const std::vector<std::vector<int32_t>>& prompts,
                                        int64_t new_tokens) {
  std::vector<GenerationRequest> out;
  for (const auto& p : prompts) {
    GenerationRequest r;
    r.id = std::to_string(out.size());
    r.prompt = p;
    r.params.temperature = 0;
    r.params.max_new_tokens = new_tokens;
    r.params.early_stop_window = 0;  // no stop tokens, no early stop: every token is made
    out.push_back(std::move(r));
  }
  return out;
}

bool ReadPrompts(const std::string& path, std::vector<std::vector<int32_t>>* prompts) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  while (std::getline(in, line)) {
    auto json = Json::Parse(line);
    if (!json.ok() || json->find("prompt_tokens") == nullptr) return false;
    std::vector<int32_t> p;
    for (const auto& t : json->find("prompt_tokens")->as_array()) {
      p.push_back(static_cast<int32_t>(t.as_int()));
    }
    prompts->push_back(std::move(p));
  }
  return !prompts->empty();
}

// Time to first token of one random prompt of each length in `lengths` ("32768,81920"):
// the median of `runs` timed generates of one token after a warm-up, with the whole prompt
// in one prefill step, and its share of the floor (decode_floor.h: PrefillFloorWork).
int TimeToFirstToken(PolicyModel& policy, const std::string& lengths, int64_t runs, bool eager,
                     int64_t dtype_bytes, double copy_bw) {
  double peak = 0;
  if (copy_bw > 0) {
    auto p = MatmulPeak();
    if (!p.ok()) return Fail(std::string(p.status().message()));
    peak = *p;
    std::printf("{\"matmul_peak_tflops\": %.1f}\n", peak / 1e12);
  }
  for (absl::string_view l : absl::StrSplit(lengths, ',', absl::SkipEmpty())) {
    int64_t len = 0;
    if (!absl::SimpleAtoi(l, &len) || len < 1) return Fail("bad length in --ttft");
    std::mt19937 rng(7);
    std::vector<std::vector<int32_t>> prompt(1, std::vector<int32_t>(len));
    for (auto& t : prompt[0]) t = static_cast<int32_t>(rng() % policy.config().vocab_size);
    EngineOptions eopts;
    eopts.max_num_seqs = 1;
    eopts.max_prefill_tokens = len;
    eopts.max_model_len = len + 8;
    eopts.kv_cache_bytes = int64_t{4} << 30;
    eopts.cuda_graphs = !eager;
    auto engine = Engine::Create(&policy, eopts);
    if (!engine.ok()) return Fail(std::string(engine.status().message()));
    std::vector<double> times;
    for (int64_t i = 0; i <= runs; ++i) {
      const auto start = std::chrono::steady_clock::now();
      auto results = (*engine)->Generate(Requests(prompt, 1));
      const double secs = Seconds(start);
      for (const auto& r : results) {
        if (!r.status.ok()) return Fail(std::string(r.status.message()));
      }
      if (i > 0) times.push_back(secs);  // the first run warms up
    }
    std::sort(times.begin(), times.end());
    const double ttft_ms = 1e3 * times[times.size() / 2];
    std::string floor_json;
    if (peak > 0) {
      const PrefillWork work = PrefillFloorWork(policy, dtype_bytes, len);
      const double compute_ms = 1e3 * work.flops() / peak;
      const double bytes_ms = 1e3 * static_cast<double>(work.weight_bytes) / copy_bw;
      const double floor_ms = std::max(compute_ms, bytes_ms);
      floor_json = absl::StrFormat(
          ", \"gemm_tflop\": %.3f, \"attention_tflop\": %.3f, \"compute_floor_ms\": %.3f, "
          "\"bytes_floor_ms\": %.3f, \"share_of_floor\": %.3f",
          work.gemm_flops / 1e12, work.attention_flops / 1e12, compute_ms, bytes_ms,
          floor_ms / ttft_ms);
    }
    std::printf("{\"ttft\": true, \"prompt_tokens\": %lld, \"ttft_ms\": %.3f%s}\n",
                static_cast<long long>(len), ttft_ms, floor_json.c_str());
    std::fflush(stdout);
  }
  return 0;
}

int Main(int argc, char** argv) {
  std::string model, prompts_dir, batches = "8,64,256", device = "cuda", dtype = "bfloat16";
  std::string ttft;
  int64_t new_tokens = 128, eager = 0, long_seqs = 0, long_tokens = 0, long_report = 4096;
  int64_t floor = 1, fuse_epilogues = 1, ttft_runs = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    int64_t* target = flag == "--new-tokens"     ? &new_tokens
                      : flag == "--enforce-eager" ? &eager
                      : flag == "--long-seqs"     ? &long_seqs
                      : flag == "--long-tokens"   ? &long_tokens
                      : flag == "--long-report"   ? &long_report
                      : flag == "--floor"         ? &floor
                      : flag == "--fuse-epilogues" ? &fuse_epilogues
                      : flag == "--ttft-runs"     ? &ttft_runs
                                                  : nullptr;
    std::string* text = flag == "--model"         ? &model
                        : flag == "--prompts-dir" ? &prompts_dir
                        : flag == "--batches"     ? &batches
                        : flag == "--device"      ? &device
                        : flag == "--dtype"       ? &dtype
                        : flag == "--ttft"        ? &ttft
                                                  : nullptr;
    if (text != nullptr) {
      *text = value;
    } else if (target == nullptr || !absl::SimpleAtoi(value, target)) {
      return Fail("bad flag " + flag + " " + value);
    }
  }
  if (model.empty()) return Fail("--model is required");
  PolicyOptions popts;
  popts.device = device;
  popts.dtype = dtype;
  auto policy = PolicyModel::Load(model, popts);
  if (!policy.ok()) return Fail(std::string(policy.status().message()));

  double copy_bw = 0;
  if (floor != 0 && device == "cuda") {
    auto bw = CopyBandwidth();
    if (!bw.ok()) return Fail(std::string(bw.status().message()));
    copy_bw = *bw;
    std::printf("{\"copy_bandwidth_gb_s\": %.1f}\n", copy_bw / 1e9);
  }
  const int64_t dtype_bytes = dtype == "float32" ? 4 : 2;

  if (!ttft.empty()) {
    if (ttft_runs < 1) return Fail("--ttft-runs must be >= 1");
    if (int rc = TimeToFirstToken(**policy, ttft, ttft_runs, eager != 0, dtype_bytes, copy_bw);
        rc != 0) {
      return rc;
    }
  }
  for (absl::string_view b : absl::StrSplit(batches, ',', absl::SkipEmpty())) {
    int64_t batch = 0;
    if (!absl::SimpleAtoi(b, &batch) || batch < 1) return Fail("bad batch size in --batches");
    std::vector<std::vector<int32_t>> prompts;
    const std::string path = absl::StrFormat("%s/prompts_%d.jsonl", prompts_dir, batch);
    if (!ReadPrompts(path, &prompts)) return Fail("cannot read prompts from " + path);
    EngineOptions eopts;
    eopts.max_num_seqs = batch;
    eopts.kv_cache_bytes = int64_t{2} << 30;
    eopts.cuda_graphs = eager == 0;
    eopts.fuse_decode_epilogues = fuse_epilogues != 0;
    auto engine = Engine::Create(policy->get(), eopts);
    if (!engine.ok()) return Fail(std::string(engine.status().message()));
    (*engine)->Generate(Requests(prompts, 8));  // warm-up (and graph capture)
    // One timed generate: its wall time, decode steps and tokens.
    struct Timed {
      double seconds = 0;
      int64_t steps = 0, tokens = 0;
    };
    auto timed = [&](int64_t n, Timed* t) -> absl::Status {
      const int64_t steps_before = (*engine)->stats().decode_steps;
      const auto start = std::chrono::steady_clock::now();
      auto results = (*engine)->Generate(Requests(prompts, n));
      t->seconds = Seconds(start);
      for (const auto& r : results) {
        if (!r.status.ok()) return r.status;
        for (const auto& s : r.samples) t->tokens += static_cast<int64_t>(s.tokens.size());
      }
      t->steps = (*engine)->stats().decode_steps - steps_before;
      return absl::OkStatus();
    };
    Timed full;
    if (absl::Status s = timed(new_tokens, &full); !s.ok()) return Fail(std::string(s.message()));
    std::string floor_json;
    if (copy_bw > 0 && new_tokens >= 4) {
      Timed half;
      if (absl::Status s = timed(new_tokens / 2, &half); !s.ok()) return Fail(std::string(s.message()));
      const int64_t steps = full.steps - half.steps;
      if (steps > 0) {
        const double step_ms = 1e3 * (full.seconds - half.seconds) / steps;
        int64_t prompt_len = 0;
        for (const auto& p : prompts) prompt_len += static_cast<int64_t>(p.size());
        prompt_len /= static_cast<int64_t>(prompts.size());
        // The steps between half and all of the new tokens attend to 3/4 of them on average.
        const DecodeStepBytes bytes = DecodeFloorBytes(**policy, dtype_bytes, batch,
                                                       prompt_len + 3 * new_tokens / 4,
                                                       (*engine)->stats());
        const double floor_ms = 1e3 * bytes.total() / copy_bw;  // traffic over copy traffic/s
        floor_json = absl::StrFormat(
            ", \"decode_ms_per_step\": %.4f, \"floor_bytes\": %lld, \"floor_ms\": %.4f, "
            "\"share_of_floor\": %.3f, \"floor_parts_mb\": {\"dense\": %.1f, \"experts\": %.1f, "
            "\"embedding\": %.1f, \"states\": %.1f, \"kv\": %.1f, \"logits\": %.1f}",
            step_ms, static_cast<long long>(bytes.total()), floor_ms, floor_ms / step_ms,
            bytes.dense_weights / 1e6, bytes.expert_weights / 1e6, bytes.embedding_rows / 1e6,
            bytes.states / 1e6, bytes.kv / 1e6, bytes.logits / 1e6);
      }
    }
    std::printf("{\"engine\": \"lightrl\", \"enforce_eager\": %s, \"fuse_epilogues\": %s, \"batch\": %lld, \"tokens\": %lld, "
                "\"seconds\": %.4f, \"tok_s\": %.1f, \"decode_steps\": %lld, \"ms_per_step\": %.3f%s}\n",
                eager != 0 ? "true" : "false", fuse_epilogues != 0 ? "true" : "false",
                static_cast<long long>(batch),
                static_cast<long long>(full.tokens), full.seconds, full.tokens / full.seconds,
                static_cast<long long>(full.steps), 1e3 * full.seconds / std::max<int64_t>(full.steps, 1),
                floor_json.c_str());
    std::fflush(stdout);
  }

  if (long_seqs > 0 && long_tokens > 0) {
    std::mt19937 rng(5);
    const int64_t vocab = (*policy)->config().vocab_size;
    std::vector<std::vector<int32_t>> prompts(long_seqs, std::vector<int32_t>(128));
    for (auto& p : prompts) {
      for (auto& t : p) t = static_cast<int32_t>(rng() % vocab);
    }
    EngineOptions eopts;
    eopts.max_num_seqs = long_seqs;
    eopts.max_model_len = 128 + long_tokens;
    eopts.kv_cache_bytes = int64_t{4} << 30;
    eopts.cuda_graphs = eager == 0;
    auto engine = Engine::Create(policy->get(), eopts);
    if (!engine.ok()) return Fail(std::string(engine.status().message()));
    const EngineStats& st = (*engine)->stats();
    const auto start = std::chrono::steady_clock::now();
    auto last = start;
    int64_t next_report = long_report, last_tokens = 0;
    auto progress = [&](const EngineProgress& p) {
      const int64_t per_seq = p.active_seqs > 0 ? p.tokens_generated / long_seqs : 0;
      if (per_seq < next_report) return;
      next_report += long_report;
      const double window = Seconds(last);
      const int64_t window_tokens = p.tokens_generated - last_tokens;
      last = std::chrono::steady_clock::now();
      last_tokens = p.tokens_generated;
      // What one sequence holds at this length: its lightning states (fixed) and the KV
      // pages of the softmax layers (one page per page_size positions).
      const int64_t length = 128 + per_seq;
      const int64_t kv = (length + st.page_size - 1) / st.page_size * st.page_bytes;
      std::printf("{\"long\": true, \"seqs\": %lld, \"generated_per_seq\": %lld, \"seconds\": %.1f, "
                  "\"window_tok_s\": %.1f, \"window_ms_per_step\": %.3f, "
                  "\"state_bytes_per_seq\": %lld, \"kv_bytes_per_seq\": %lld}\n",
                  static_cast<long long>(long_seqs), static_cast<long long>(per_seq),
                  Seconds(start), window_tokens / window, 1e3 * window * long_seqs / window_tokens,
                  static_cast<long long>(st.slot_bytes), static_cast<long long>(kv));
      std::fflush(stdout);
    };
    auto results = (*engine)->Generate(Requests(prompts, long_tokens), progress);
    int64_t tokens = 0, min_len = long_tokens;
    for (const auto& r : results) {
      if (!r.status.ok()) return Fail(std::string(r.status.message()));
      for (const auto& s : r.samples) {
        tokens += static_cast<int64_t>(s.tokens.size());
        min_len = std::min<int64_t>(min_len, static_cast<int64_t>(s.tokens.size()));
      }
    }
    const double secs = Seconds(start);
    std::printf("{\"long\": true, \"done\": true, \"seqs\": %lld, \"tokens\": %lld, "
                "\"shortest_sequence\": %lld, \"seconds\": %.1f, \"tok_s\": %.1f, "
                "\"preemptions\": %lld}\n",
                static_cast<long long>(long_seqs), static_cast<long long>(tokens),
                static_cast<long long>(min_len), secs, tokens / secs,
                static_cast<long long>(st.preemptions));
  }
  return 0;
}

}  // namespace
}  // namespace lightrl

int main(int argc, char** argv) { return lightrl::Main(argc, argv); }
