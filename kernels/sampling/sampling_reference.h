// Plain C++ oracle of token sampling: greedy, temperature, top-k and top-p with one
// caller-drawn uniform per row, and the log-probability of the sampled token, in double
// precision. The fused CUDA kernel (kernels/sampling/sampling.h) and the engine's
// torch sampler (inference_engine/sampler.h) are tested against it. Torch-free, GPU-free.
//
// The rule, for one row of logits x over a vocabulary of V tokens:
//  - the options are rounded to FP32 first, as both implementations receive them;
//  - greedy (temperature <= 0 in FP32): the argmax of x, the lowest id among equal
//    maxima (torch's argmax); its logprob is log_softmax(x) there;
//  - otherwise z = x / T, the division rounded to FP32 as both implementations do it,
//    and p = softmax(z) in double. The sampling order is descending logit (descending
//    probability), equal logits by ascending id. Top-k keeps the first top_k tokens of
//    that order (off when top_k < 1 or >= V); top-p keeps a token while the probability
//    mass strictly before it is < top_p (off when top_p >= 1), so the first token always
//    stays; together they keep the shorter of the two prefixes. The token is the first
//    one in the order whose cumulative kept mass exceeds uniform * (kept mass), or the
//    last kept token when none does (rounding never lands past the kept prefix). Its
//    logprob is log_softmax(z) at the token: of the untruncated distribution at T.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace lightrl {

struct SamplingReferenceRow {
  double temperature = 1.0;  // <= 0 (after rounding to FP32): greedy
  double top_p = 1.0;        // >= 1: off
  int64_t top_k = 0;         // < 1 or >= V: off
  double uniform = 0.5;      // in [0, 1)
};

struct SamplingReferenceResult {
  int64_t token = -1;
  double logprob = 0.0;  // log_softmax(x / T) at the token (T = 1 when greedy)
  int64_t num_kept = 0;  // tokens kept by top-k and top-p together (1 when greedy)
  // How close the row's two rounding-sensitive decisions are to flipping, for tests that
  // compare implementations of limited precision. top_p_margin: the distance, in
  // probability, from top_p to the masses before the last kept and before the first
  // dropped token of the top-p rule (+inf when top-p is off, greedy, or a side has no such
  // boundary). draw_margin: the distance, in units of the uniform, from uniform to the
  // ends of the sampled token's interval of the kept cdf (+inf when greedy; an end that
  // no uniform in [0, 1) can cross counts as +inf).
  double top_p_margin = INFINITY;
  double draw_margin = INFINITY;
};

// Samples one row of `vocab` logits (finite or -inf, at least one finite).
SamplingReferenceResult ReferenceSample(const float* logits, int64_t vocab,
                                        const SamplingReferenceRow& row);

// The distribution ReferenceSample draws from as the uniform ranges over [0, 1): the kept
// tokens' probabilities renormalised over the kept mass, zero for dropped tokens; one-hot
// at the argmax when greedy. [vocab] entries, by token id.
std::vector<double> ReferenceSamplingDistribution(const float* logits, int64_t vocab,
                                                  const SamplingReferenceRow& row);

}  // namespace lightrl
