#include "inference_engine/sampling_params.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace lightrl {

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) ||
      (temperature != 0 && !(temperature >= kMinTemperature && temperature <= kMaxTemperature))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "temperature must be 0 (greedy) or a finite number in [", kMinTemperature, ", ",
        kMaxTemperature, "], got ", temperature));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (top_p < kMinTopP) {
    return absl::InvalidArgumentError(absl::StrCat(
        "top_p must be at least ", kMinTopP, " (the sampler's FP32 resolution; use temperature 0 "
        "for greedy), got ", top_p));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens must be >= 1, got ", max_new_tokens));
  }
  if (n < 1) return absl::InvalidArgumentError(absl::StrCat("n must be >= 1, got ", n));
  if (early_stop_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("early_stop_window must be >= 0, got ", early_stop_window));
  }
  if (!(early_stop_prob > 0 && early_stop_prob < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("early_stop_prob must be in (0, 1), got ", early_stop_prob));
  }
  if (static_cast<int64_t>(stop_token_ids.size()) > kMaxStopTokenIds) {
    return absl::InvalidArgumentError(absl::StrCat("stop_token_ids holds ", stop_token_ids.size(),
                                                   " ids, more than ", kMaxStopTokenIds));
  }
  if (static_cast<int64_t>(stop_strings.size()) > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stop_strings holds ", stop_strings.size(),
                                                   " strings, more than ", kMaxStopStrings));
  }
  for (size_t i = 0; i < stop_strings.size(); ++i) {
    if (stop_strings[i].empty()) {
      return absl::InvalidArgumentError("stop_strings must not contain \"\"");
    }
    if (static_cast<int64_t>(stop_strings[i].size()) > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop_strings[", i, "] is ",
                                                     stop_strings[i].size(), " bytes, more than ",
                                                     kMaxStopStringBytes));
    }
  }
  return absl::OkStatus();
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kEarlyStop: return "early-stop";
  }
  return "?";
}

std::optional<FinishReason> ParseFinishReason(const std::string& name) {
  for (FinishReason r : {FinishReason::kLength, FinishReason::kStop, FinishReason::kEarlyStop}) {
    if (name == FinishReasonName(r)) return r;
  }
  return std::nullopt;
}

}  // namespace lightrl
