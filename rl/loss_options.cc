#include "rl/loss_options.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace lightrl {
namespace {

absl::Status CheckOffset(const char* name, double value, double max) {
  if (!std::isfinite(value) || value < 0.0 || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy_loss.", name, " must be in [0, ", max, "], got ", value));
  }
  return absl::OkStatus();
}

}  // namespace

std::string PolicyLossKindName(PolicyLossKind kind) {
  switch (kind) {
    case PolicyLossKind::kCispo:
      return "cispo";
    case PolicyLossKind::kGrpo:
      return "grpo";
    case PolicyLossKind::kPpoClip:
      return "ppo_clip";
    case PolicyLossKind::kDapo:
      return "dapo";
  }
  return absl::StrCat("unknown(", static_cast<int>(kind), ")");
}

absl::StatusOr<PolicyLossKind> ParsePolicyLossKind(absl::string_view name) {
  for (PolicyLossKind kind : {PolicyLossKind::kCispo, PolicyLossKind::kGrpo,
                              PolicyLossKind::kPpoClip, PolicyLossKind::kDapo}) {
    if (name == PolicyLossKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "policy_loss.kind must be one of cispo, grpo, ppo_clip, dapo, got \"", name, "\""));
}

absl::Status PolicyLossOptions::Validate() const {
  // A lower offset above 1 would put a negative bound under a positive ratio: meaningless.
  if (absl::Status s = CheckOffset("eps_low", eps_low, 1.0); !s.ok()) return s;
  if (absl::Status s = CheckOffset("eps_high", eps_high, 1e6); !s.ok()) return s;
  if (absl::Status s = CheckOffset("ppo_eps", ppo_eps, 1.0); !s.ok()) return s;
  if (absl::Status s = CheckOffset("dapo_eps_low", dapo_eps_low, 1.0); !s.ok()) return s;
  if (absl::Status s = CheckOffset("dapo_eps_high", dapo_eps_high, 1e6); !s.ok()) return s;
  if (unified_mask && kind != PolicyLossKind::kCispo) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy_loss.unified_mask applies to kind cispo only (the PPO-style kinds mask "
        "implicitly), got kind ", PolicyLossKindName(kind)));
  }
  if (!std::isfinite(truncated_is_cap)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy_loss.truncated_is_cap must be finite, got ", truncated_is_cap));
  }
  if (!std::isfinite(kl_coef) || kl_coef < 0.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy_loss.kl_coef must be finite and >= 0, got ", kl_coef));
  }
  if (!std::isfinite(dual_clip) || (dual_clip != 0.0 && dual_clip <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy_loss.dual_clip must be 0 (off) or > 1, got ", dual_clip));
  }
  if (dual_clip != 0.0 && kind == PolicyLossKind::kCispo) {
    return absl::InvalidArgumentError(
        "policy_loss.dual_clip applies to the PPO-style kinds (grpo, ppo_clip, dapo); CISPO's "
        "weight is capped by eps_high");
  }
  return absl::OkStatus();
}

}  // namespace lightrl
