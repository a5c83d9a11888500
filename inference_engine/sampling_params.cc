#include "inference_engine/sampling_params.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace lightrl {

absl::Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", temperature));
  }
  if (!(top_p > 0 && top_p <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
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
  for (const auto& s : stop_strings) {
    if (s.empty()) return absl::InvalidArgumentError("stop_strings must not contain \"\"");
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
