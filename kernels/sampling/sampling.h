// Fused sampling for the engine's CUDA backend: one token per row of logits, greedy or
// drawn at a temperature under top-k and top-p, with one caller-drawn uniform per row, and
// the FP32 log-probability of each sampled token. Owns the kernel and its launch; never
// allocates or syncs, needs no workspace, and its launch shape depends only on host-side
// sizes, so a CUDA graph can capture it and replay it on new logits and options.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace lightrl {

// One row's options, in device memory. They are FP32 so that a batch's options are one
// [rows, 4] FP32 array.
struct SamplingRowOptions {
  float temperature = 1.0f;  // not > 0 (0, negative, NaN): greedy
  float top_p = 1.0f;        // keep a token while the mass before it is < top_p; >= 1: off
  float top_k = 0.0f;        // a whole number; keep the top_k likeliest; < 1 or >= vocab: off
  float uniform = 0.5f;      // in [0, 1): the draw's position in the kept cdf
};
static_assert(sizeof(SamplingRowOptions) == 16, "SamplingRowOptions is a row of 4 floats");

enum class SamplingLogitsType { kFloat32, kBFloat16 };

// tokens[r] and logprobs[r] for r < rows, by the rule of
// kernels/sampling/sampling_reference.h: z = logits / T (an FP32 division);
// the sampling order is descending logit, equal logits by ascending id; greedy takes the
// first token of that order (torch's argmax); otherwise top-k and top-p keep a prefix of
// the order and the token is the first whose cumulative kept mass exceeds uniform * (kept
// mass). logprobs[r] = log_softmax(z)[token] (T = 1 when greedy), of the untruncated
// distribution. Probability masses are summed exactly in 64-bit fixed point (2^-40 of the
// row's largest exp(z - max z)), so results do not depend on thread scheduling: a replay
// gives the bits of the eager launch. Logits must be finite or -inf (NaN is not ordered),
// with a finite one per row; a row of -inf only gets token 0 and a NaN logprob.
struct FusedSamplingParams {
  const void* logits = nullptr;  // [rows, vocab] FP32 or bf16, row stride logits_row_stride
  SamplingLogitsType logits_type = SamplingLogitsType::kFloat32;
  int64_t logits_row_stride = 0;                // elements; >= vocab
  const SamplingRowOptions* options = nullptr;  // [rows]
  int64_t* tokens = nullptr;                    // [rows] out
  float* logprobs = nullptr;                    // [rows] out
  int rows = 0;
  int vocab = 0;  // 1 .. kSamplingMaxVocab

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

// The 64-bit fixed-point sums hold 2^23 tokens whose exp(z - max z) is 1.
constexpr int kSamplingMaxVocab = 1 << 23;

// Launches one CTA per row on `stream`. Returns cudaErrorInvalidValue for parameters that
// Validate() rejects, else the launch's error.
cudaError_t LaunchFusedSampling(const FusedSamplingParams& params, cudaStream_t stream);

}  // namespace lightrl
