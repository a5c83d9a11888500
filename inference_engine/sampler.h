// Batched sampling from logits: greedy, temperature, top-k and top-p, with one
// caller-supplied uniform number per row so that a sequence's samples do not depend on
// which other sequences share its batch. The rule (sampling order, top-p boundary, ties)
// is spelled out in kernels/sampling/sampling_reference.h. CUDA logits take the
// fused kernel where the engine's CUDA backend is built (kernels/sampling/sampling.h),
// anything else torch ops; either way one copy of the options goes to the device and one
// of the results comes back. Internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace lightrl {

struct SamplerRow {
  double temperature = 1.0;  // 0 (or anything that is not > 0 in FP32) = greedy
  double top_p = 1.0;
  int64_t top_k = 0;
  double uniform = 0.5;      // in [0, 1)
};

struct SampledTokens {
  std::vector<int64_t> tokens;
  std::vector<float> logprobs;  // log softmax(logits / T) at the token (T = 1 when greedy)
};

SampledTokens SampleTokens(const torch::Tensor& logits, const std::vector<SamplerRow>& rows);

}  // namespace lightrl
