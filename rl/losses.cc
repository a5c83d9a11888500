#include "rl/losses.h"

#include <cmath>
#include <utility>

namespace lightrl {
namespace {

// The ratio range [lo, hi] each kind clips to.
std::pair<double, double> ClipRange(const PolicyLossOptions& o) {
  switch (o.kind) {
    case PolicyLossKind::kCispo:
      return {1.0 - o.eps_low, 1.0 + o.eps_high};
    case PolicyLossKind::kGrpo:
    case PolicyLossKind::kPpoClip:
      return {1.0 - o.ppo_eps, 1.0 + o.ppo_eps};
    case PolicyLossKind::kDapo:
      return {1.0 - o.dapo_eps_low, 1.0 + o.dapo_eps_high};
  }
  return {1.0, 1.0};
}

void CheckSameShape(const torch::Tensor& t, const torch::Tensor& like, const char* name) {
  TORCH_CHECK(t.defined(), "PolicyLossInputs.", name, " is undefined");
  TORCH_CHECK(t.sizes() == like.sizes(), "PolicyLossInputs.", name, " has shape ", t.sizes(),
              ", logprobs has ", like.sizes());
}

double MeanOver(const torch::Tensor& values, const torch::Tensor& keep, double count) {
  if (count == 0.0) return 0.0;
  return values.masked_select(keep).sum().item<double>() / count;
}

}  // namespace

PolicyLossOutput ComputePolicyLoss(const PolicyLossInputs& in, const PolicyLossOptions& options) {
  const torch::Tensor& logp = in.logprobs;
  TORCH_CHECK(logp.defined() && logp.dim() == 1,
              "PolicyLossInputs.logprobs must be a defined 1-D tensor");
  TORCH_CHECK(at::isFloatingType(logp.scalar_type()),
              "PolicyLossInputs.logprobs must be floating point, got ", logp.scalar_type());
  CheckSameShape(in.old_logprobs, logp, "old_logprobs");
  CheckSameShape(in.advantages, logp, "advantages");
  CheckSameShape(in.mask, logp, "mask");
  TORCH_CHECK(std::isfinite(in.num_tokens_global) && in.num_tokens_global > 0.0,
              "PolicyLossInputs.num_tokens_global must be > 0, got ", in.num_tokens_global);
  const bool use_tis = options.truncated_is_cap > 0.0;
  const bool use_kl = options.kl_coef > 0.0;
  if (use_tis) CheckSameShape(in.rollout_logprobs, logp, "rollout_logprobs");
  if (use_kl) CheckSameShape(in.ref_logprobs, logp, "ref_logprobs");

  const auto dtype = logp.scalar_type();
  const double inv_n = 1.0 / in.num_tokens_global;
  const auto [lo, hi] = ClipRange(options);
  const bool is_cispo = options.kind == PolicyLossKind::kCispo;

  // Everything but logprobs is data: detach so no caller tensor sneaks a graph in.
  const torch::Tensor keep = in.mask.detach() != 0;
  const torch::Tensor mask = in.mask.detach().to(dtype);
  const torch::Tensor old = in.old_logprobs.detach().to(dtype);
  const torch::Tensor adv = in.advantages.detach().to(dtype);
  const torch::Tensor zeros = torch::zeros_like(logp);
  // Masked tokens (padding) may hold any logprob, even -inf; selecting 0 there keeps their
  // gradient exactly zero instead of 0 * inf = nan.
  const torch::Tensor logp_safe = torch::where(keep, logp, zeros);
  const torch::Tensor log_ratio =
      (logp_safe - torch::where(keep, old, zeros)).clamp(-kMaxLogRatio, kMaxLogRatio);
  const torch::Tensor ratio = torch::exp(log_ratio);
  const torch::Tensor ratio_sg = ratio.detach();

  // Per-token stop-gradient multipliers: the mask, truncated IS, the unified mask.
  torch::Tensor token_weight = mask;
  torch::Tensor tis;
  if (use_tis) {
    const torch::Tensor rollout = in.rollout_logprobs.detach().to(dtype);
    tis = torch::exp(torch::where(keep, old - rollout, zeros)).clamp_max(options.truncated_is_cap);
    token_weight = token_weight * tis;
  }
  torch::Tensor unified_keep;
  if (options.unified_mask) {
    const torch::Tensor drop = ((adv > 0) & (ratio_sg > hi)) | ((adv < 0) & (ratio_sg < lo));
    unified_keep = ~drop;
    token_weight = token_weight * unified_keep.to(dtype);
  }

  torch::Tensor per_token;
  if (is_cispo) {
    // The weight is a constant: gradient flows through log pi only, and a token whose
    // ratio left the clip range still contributes, with its weight capped.
    per_token = -(ratio_sg.clamp(lo, hi) * adv) * logp_safe;
  } else {
    per_token = -torch::minimum(ratio * adv, ratio.clamp(lo, hi) * adv);
    if (options.dual_clip > 0.0) {
      // For A < 0 the surrogate -r A grows without bound in r; cap it at -c A.
      per_token = torch::where(adv < 0, torch::minimum(per_token, -options.dual_clip * adv), per_token);
    }
  }
  const torch::Tensor policy_loss = (per_token * token_weight).sum() * inv_n;

  PolicyLossOutput out;
  out.loss = policy_loss;
  if (use_kl) {
    // k3 estimator of KL(pi_theta || pi_ref) on samples of pi_theta, as GRPO uses it.
    const torch::Tensor d = torch::where(keep, in.ref_logprobs.detach().to(dtype) - logp, zeros);
    const torch::Tensor kl = torch::exp(d) - d - 1.0;
    const torch::Tensor kl_loss = (kl * mask).sum() * (options.kl_coef * inv_n);
    out.loss = policy_loss + kl_loss;
    out.kl_loss = kl_loss.item<double>();
  }
  out.policy_loss = policy_loss.item<double>();

  torch::NoGradGuard no_grad;
  const double count = keep.sum().item<double>();
  out.num_tokens = count;
  if (count == 0.0) return out;
  const torch::Tensor outside = ((ratio_sg < lo) | (ratio_sg > hi)).to(dtype);
  out.clip_fraction = MeanOver(outside, keep, count);
  const torch::Tensor kept_ratio = ratio_sg.masked_select(keep);
  out.ratio_mean = kept_ratio.sum().item<double>() / count;
  out.ratio_min = kept_ratio.min().item<double>();
  out.ratio_max = kept_ratio.max().item<double>();
  out.clipped_weight_mean = MeanOver(ratio_sg.clamp(lo, hi), keep, count);
  out.approx_kl = MeanOver(ratio_sg - 1.0 - log_ratio.detach(), keep, count);
  if (options.unified_mask) {
    out.unified_mask_fraction = MeanOver((~unified_keep).to(dtype), keep, count);
  }
  out.truncated_is_weight_mean = use_tis ? MeanOver(tis, keep, count) : 1.0;
  return out;
}

}  // namespace lightrl
