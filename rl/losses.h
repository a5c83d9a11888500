// The policy-gradient losses of the learner: CISPO (MiniMax-M1, the default) and GRPO,
// PPO-clip and DAPO as comparison losses, over flattened per-token tensors of one
// minibatch. Owns the per-token loss math and its statistics; not advantages (advantages.h),
// not the model forward, not the optimizer. Internal header of torch-linking targets.
//
// Normalisation, all kinds: token-level, sum over tokens / num_tokens_global, where
// num_tokens_global counts the mask-1 tokens of the whole global batch of the optimizer
// step. CISPO's paper defines it that way (1 / sum_i |o_i|); using it for GRPO/PPO/DAPO too
// keeps the four losses comparable under one learner, avoids GRPO's sequence-mean length
// bias (which DAPO and Dr. GRPO removed), and makes the sum over minibatches and data-
// parallel ranks equal the full-batch loss exactly, so gradient accumulation needs no
// re-weighting. GRPO and PPO-clip are therefore the same loss here; GRPO differs only in
// its group-relative advantages and, if wanted, kl_coef > 0 against a reference policy.
#pragma once

#include <torch/torch.h>

#include "rl/loss_options.h"

namespace lightrl {

// Per-token tensors of one minibatch, all [N] over its response tokens, flattened.
struct PolicyLossInputs {
  // log pi_theta of each sampled token under the current policy; requires grad.
  torch::Tensor logprobs;
  // log pi_old, computed once per generation batch by the learner.
  torch::Tensor old_logprobs;
  // The rollout engine's logprobs; needed only when truncated_is_cap > 0.
  torch::Tensor rollout_logprobs;
  // The reference policy's logprobs; needed only when kl_coef > 0.
  torch::Tensor ref_logprobs;
  // The sequence's advantage A_i, repeated over its tokens.
  torch::Tensor advantages;
  // 1 for tokens that count, 0 for padding and filtered responses (bool or float).
  // Masked-out tokens get exactly zero gradient even if their logprobs are garbage.
  torch::Tensor mask;
  // The mask-1 token count of the whole global batch of the optimizer step (all
  // minibatches, all ranks); must be > 0.
  double num_tokens_global = 0.0;
};

struct PolicyLossOutput {
  // Scalar loss to backpropagate; summing it over the step's minibatches and ranks gives
  // the global-batch loss.
  torch::Tensor loss;
  // The statistics below are over this minibatch's mask-1 tokens (0 when there are none);
  // weight them by num_tokens to aggregate across minibatches.
  double num_tokens = 0.0;
  // Loss value without the KL term, and the KL term alone (kl_coef * KL / N_global).
  double policy_loss = 0.0;
  double kl_loss = 0.0;
  // Fraction of tokens whose ratio r lies outside the kind's clip range.
  double clip_fraction = 0.0;
  // IS ratio r = pi_theta / pi_old.
  double ratio_mean = 0.0;
  double ratio_min = 0.0;
  double ratio_max = 0.0;
  // Mean of the clipped ratio clip(r) (CISPO's weight w).
  double clipped_weight_mean = 0.0;
  // Approximate KL(pi_old || pi_theta), k3 estimator mean of (r - 1) - log r.
  double approx_kl = 0.0;
  // Fraction of tokens dropped by the unified mask (CISPO with unified_mask only).
  double unified_mask_fraction = 0.0;
  // Mean truncated-IS weight (1 when disabled).
  double truncated_is_weight_mean = 0.0;
};

// |log r| is clamped to this before exp: FP32 exp overflows to inf at log r ~ 89, and an
// inf ratio turns a PPO-style surrogate (and its gradient) into inf or nan. e^20 ~ 5e8 is
// far outside every clip range, so no clipped value changes.
inline constexpr double kMaxLogRatio = 20.0;

// The loss of one minibatch; see the header comment for the normalisation. Caller bugs
// (shape/dtype mismatch, missing optional inputs, num_tokens_global <= 0) are TORCH_CHECKs;
// validate options once at config load.
PolicyLossOutput ComputePolicyLoss(const PolicyLossInputs& inputs,
                                   const PolicyLossOptions& options);

}  // namespace lightrl
