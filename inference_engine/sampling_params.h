// Per-request generation options and the results the engine returns. Torch-free: the
// rollout service, the controller and the CLI fill and read these.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace lightrl {

// Ranges Validate() enforces. The sampler works in FP32: a temperature below the minimum
// (or a denormal one) turns logits / T into infinities, and a top_p below the minimum
// rounds to no mass at all.
inline constexpr double kMinTemperature = 1e-4, kMaxTemperature = 1e4;
inline constexpr double kMinTopP = 1e-6;
inline constexpr int64_t kMaxStopTokenIds = 1024;
inline constexpr int64_t kMaxStopStrings = 64, kMaxStopStringBytes = 1024;

struct SamplingParams {
  // 0 = greedy, else in [kMinTemperature, kMaxTemperature]. Logprobs are of the
  // distribution sampled from: softmax(logits / T) (softmax(logits) when greedy), so T = 1
  // gives the learner's logprobs.
  double temperature = 1.0;
  double top_p = 1.0;              // nucleus mass in [kMinTopP, 1]
  int64_t top_k = 0;               // 0 = no top-k filter; above the vocabulary = none
  int64_t max_new_tokens = 256;
  std::vector<int64_t> stop_token_ids;  // finishing tokens, kept in the output
  std::vector<std::string> stop_strings;  // finish once the decoded text contains one
  uint64_t seed = 0;               // samples are a function of (seed, sample index) only
  int64_t n = 1;                   // samples per prompt, sharing the prompt's prefill
  // MiniMax-M1's early stop: halt once `early_stop_window` consecutive tokens each had
  // probability > early_stop_prob. 0 disables.
  int64_t early_stop_window = 3000;
  double early_stop_prob = 0.99;

  // Errors name the field and value.
  absl::Status Validate() const;
};

enum class FinishReason { kLength, kStop, kEarlyStop };
const char* FinishReasonName(FinishReason reason);  // "length", "stop", "early-stop"
// The inverse of FinishReasonName; nullopt for any other name.
std::optional<FinishReason> ParseFinishReason(const std::string& name);

struct GeneratedSample {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;  // FP32, one per token
  FinishReason finish_reason = FinishReason::kLength;
};

struct GenerationRequest {
  std::string id;
  std::vector<int32_t> prompt;
  SamplingParams params;
  // Optional: once set (by any thread), the engine drops the request's sequences at its
  // next step and the result is CANCELLED, freeing their slots and pages for the others.
  std::shared_ptr<const std::atomic<bool>> cancelled;
};

struct GenerationResult {
  std::string id;
  absl::Status status;  // a bad request fails alone; the others go on
  std::vector<GeneratedSample> samples;
};

}  // namespace lightrl
