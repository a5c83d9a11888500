// Options of the policy losses (kind, clip ranges, unified mask, truncated IS, KL), kept
// torch-free so configs and the learner's public header can hold them; the loss math that
// reads them is in losses.h. Owns parsing and validation of these fields, nothing else.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lightrl {

enum class PolicyLossKind {
  kCispo,    // sg(clip(r, 1-eps_low, 1+eps_high)) * A * log pi: every token keeps gradient.
  kGrpo,     // -min(r A, clip(r, 1-eps, 1+eps) A), symmetric eps (ppo_eps).
  kPpoClip,  // Same surrogate as kGrpo (normalisation: see losses.h).
  kDapo,     // PPO-clip with clip-higher: eps_low dapo_eps_low, eps_high dapo_eps_high.
};

struct PolicyLossOptions {
  // Which loss to compute.
  PolicyLossKind kind = PolicyLossKind::kCispo;
  // CISPO's IS-weight clip, as offsets around 1: w = clip(r, 1 - eps_low, 1 + eps_high).
  // 1.0 means no lower bound (the paper sets eps_low "large"); peers differ (verl 0.2/0.2,
  // SkyRL/ScaleRL 1.0/4.0), DESIGN.md section 5 picks 1.0/4.0.
  double eps_low = 1.0;
  // CISPO's upper offset; the only one the paper tunes.
  double eps_high = 4.0;
  // PPO-clip and GRPO's symmetric clip epsilon.
  double ppo_eps = 0.2;
  // DAPO's lower clip epsilon.
  double dapo_eps_low = 0.2;
  // DAPO's clip-higher upper epsilon (decoupled so low-probability tokens can grow).
  double dapo_eps_high = 0.28;
  // CISPO only: the paper's Eq. 7 token mask M, which drops tokens with A > 0 and
  // r > 1 + eps_high or A < 0 and r < 1 - eps_low, i.e. PPO's implicit trust-region
  // masking expressed on top of CISPO (eps_low/eps_high above). Off by default, as in M1.
  bool unified_mask = false;
  // Truncated importance sampling against the rollout engine's logprobs: each token is
  // weighted by sg(min(pi_old / pi_rollout, cap)), correcting the engine/learner mismatch.
  // <= 0 disables; > 0 needs PolicyLossInputs::rollout_logprobs.
  double truncated_is_cap = 0.0;
  // Weight of a k3 KL penalty to a reference policy (needs ref_logprobs); 0 (M1) disables.
  double kl_coef = 0.0;
  // Dual-clip PPO (Ye et al. 2020) for the PPO-style kinds: a token with A < 0 loses at
  // most dual_clip * |A|, however far its ratio grew. 0 disables; otherwise must be > 1.
  // CISPO's weight is already capped at 1 + eps_high.
  double dual_clip = 0.0;

  absl::Status Validate() const;
};

// "cispo", "grpo", "ppo_clip", "dapo": the config spelling of each kind.
std::string PolicyLossKindName(PolicyLossKind kind);
absl::StatusOr<PolicyLossKind> ParsePolicyLossKind(absl::string_view name);

}  // namespace lightrl
