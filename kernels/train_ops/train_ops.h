// Memory-bound pieces of the learner's step as single kernels: the experts' SwiGLU, the
// MoE's weighted combine, the FP32 LM head's token log-probabilities and their gradient,
// and AdamW on FP32 master weights. Torch-free launcher header (the policy's torch adapter is policy/train_ops_cuda.cc);
// the launchers never sync or allocate, write nothing but their outputs, and return the
// cudaError_t of their launch (cudaErrorInvalidValue for parameters Validate() rejects).
// The plain C++ oracles are in kernels/train_ops/train_ops_reference.h.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace lightrl {

// h[i] = bf16(silu(a[i]) * b[i]), silu(x) = x / (1 + exp(-x)), in FP32 and rounded once.
// Contiguous device arrays of n elements.
struct SwiGluParams {
  const __nv_bfloat16* a = nullptr;  // gate projection
  const __nv_bfloat16* b = nullptr;  // up projection
  __nv_bfloat16* h = nullptr;
  int64_t n = 0;

  // nullptr when the parameters are usable, else what is wrong with them.
  const char* Validate() const;
};

cudaError_t LaunchSwiGlu(const SwiGluParams& params, cudaStream_t stream);

// The gradient of SwiGluParams's h: da = bf16(dh * b * silu'(a)), db = bf16(dh * silu(a)),
// with silu'(x) = s(x) (1 + x (1 - s(x))), s the logistic function; FP32 inside.
struct SwiGluBackwardParams {
  const __nv_bfloat16* a = nullptr;
  const __nv_bfloat16* b = nullptr;
  const __nv_bfloat16* dh = nullptr;
  __nv_bfloat16* da = nullptr;
  __nv_bfloat16* db = nullptr;
  int64_t n = 0;

  const char* Validate() const;
};

cudaError_t LaunchSwiGluBackward(const SwiGluBackwardParams& params, cudaStream_t stream);

// For each row r < rows of FP32 logits [rows, vocab] (row stride logits_row_stride):
// lse[r] = log(sum_v exp(logits[r, v])) and logp[r] = logits[r, targets[r]] - lse[r], all in
// FP32 (one pass, running max). A target outside [0, vocab) gives logp NaN.
struct TokenLogprobParams {
  const float* logits = nullptr;
  const int64_t* targets = nullptr;  // [rows]
  float* lse = nullptr;              // [rows]
  float* logp = nullptr;             // [rows]
  int64_t logits_row_stride = 0;     // elements, >= vocab
  int rows = 0;
  int vocab = 0;

  const char* Validate() const;
};

// One CTA per row.
cudaError_t LaunchTokenLogprob(const TokenLogprobParams& params, cudaStream_t stream);

// The gradient of TokenLogprobParams's logp with respect to the logits, given grad[r] (the
// upstream gradient of logp[r]) and the forward's lse: dlogits[r, v] =
// bf16(grad[r] * ([v == targets[r]] - exp(logits[r, v] - lse[r]))). dlogits is written in
// bf16 because the LM head's backward GEMMs read bf16 operands.
struct TokenLogprobBackwardParams {
  const float* logits = nullptr;
  const int64_t* targets = nullptr;
  const float* lse = nullptr;
  const float* grad = nullptr;         // [rows]
  __nv_bfloat16* dlogits = nullptr;    // [rows, vocab], row stride dlogits_row_stride
  int64_t logits_row_stride = 0;
  int64_t dlogits_row_stride = 0;
  int rows = 0;
  int vocab = 0;

  const char* Validate() const;
};

cudaError_t LaunchTokenLogprobBackward(const TokenLogprobBackwardParams& params,
                                       cudaStream_t stream);

// The MoE's combine: out[t, :] = bf16(sum_j w[t, j] * y[rows[t, j], :]) for t < tokens, j <
// top_k, in FP32 and rounded once. y holds the experts' output rows; rows[t, j] is the row
// of token t's j-th assignment (every entry a valid row; a dropped assignment has w 0).
struct MoeCombineParams {
  const __nv_bfloat16* y = nullptr;  // [num_rows, dim]
  const int64_t* rows = nullptr;     // [tokens, top_k]
  const float* w = nullptr;          // [tokens, top_k]
  __nv_bfloat16* out = nullptr;      // [tokens, dim]
  int64_t num_rows = 0;
  int tokens = 0, top_k = 0, dim = 0;

  const char* Validate() const;
};

cudaError_t LaunchMoeCombine(const MoeCombineParams& params, cudaStream_t stream);

// Its gradient, given g = d out [tokens, dim] bf16: dy[r, :] = bf16(w[a] * g[a / top_k, :])
// for the one assignment a = readers[r] that reads row r (zeros where readers[r] ==
// tokens * top_k: padding), and dw[t, j] = sum_i g[t, i] * y[rows[t, j], i] in FP32.
struct MoeCombineBackwardParams {
  const __nv_bfloat16* y = nullptr;
  const int64_t* rows = nullptr;
  const int64_t* readers = nullptr;  // [num_rows]
  const float* w = nullptr;
  const __nv_bfloat16* g = nullptr;  // [tokens, dim]
  __nv_bfloat16* dy = nullptr;       // [num_rows, dim]
  float* dw = nullptr;               // [tokens, top_k]
  int64_t num_rows = 0;
  int tokens = 0, top_k = 0, dim = 0;

  const char* Validate() const;
};

cudaError_t LaunchMoeCombineBackward(const MoeCombineBackwardParams& params, cudaStream_t stream);

// One tensor of a multi-tensor AdamW update on FP32 master weights. The gradient is bf16
// (a bf16 parameter's own gradient) or FP32 (a reduced gradient), per grad_bf16; where
// param_out is set the updated master is also written there rounded to bf16 (the model's
// weights), so no separate copy pass is needed.
struct AdamWTensor {
  float* master = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  const void* grad = nullptr;
  __nv_bfloat16* param_out = nullptr;  // optional
  int64_t n = 0;
  float bias_correction1 = 1.f;  // 1 - beta1^step
  float bias_correction2 = 1.f;  // 1 - beta2^step
  bool grad_bf16 = false;
};

// torch's AdamW (decoupled weight decay, bias-corrected moments, no amsgrad), applied to the
// gradient times *grad_scale when grad_scale is set (a device scalar: the gradient clip's
// factor, so the clip needs no pass of its own):
//   p  *= 1 - lr * weight_decay
//   m   = beta1 m + (1 - beta1) g          v = beta2 v + (1 - beta2) g^2
//   p  -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// `tensors` and `chunks` are device arrays the caller fills (MakeAdamWChunks plans the
// chunks): each CTA updates chunk c's [begin, end) of tensor chunk.tensor.
struct AdamWChunk {
  int32_t tensor = 0;
  int64_t begin = 0, end = 0;
};

struct MasterAdamWParams {
  const AdamWTensor* tensors = nullptr;  // device
  const AdamWChunk* chunks = nullptr;    // device
  int num_chunks = 0;
  const float* grad_scale = nullptr;  // device scalar, optional
  float lr = 0.f, beta1 = 0.9f, beta2 = 0.999f, weight_decay = 0.f, eps = 1e-8f;

  const char* Validate() const;
};

// Elements of one chunk: the unit of work of one CTA.
constexpr int64_t kAdamWChunk = 1 << 16;

// Splits tensors of the given sizes into kAdamWChunk-element chunks, writing at most
// `capacity` of them to `out`; returns how many there are in all.
int64_t MakeAdamWChunks(const int64_t* sizes, int num_tensors, AdamWChunk* out, int64_t capacity);

cudaError_t LaunchMasterAdamW(const MasterAdamWParams& params, cudaStream_t stream);

// One tensor of a multi-tensor gather into an FP32 buffer: its n bf16 elements (nullptr:
// zeros) converted to dst[dst_offset, dst_offset + n). The data-parallel learner fills a
// gradient bucket this way, one launch per bucket.
struct GatherSegment {
  const __nv_bfloat16* src = nullptr;
  int64_t dst_offset = 0;
  int64_t n = 0;
};

// `segments` and `chunks` are device arrays (chunks planned by MakeAdamWChunks over the
// segments' sizes): each CTA converts chunk c's [begin, end) of segment chunk.tensor.
struct GatherToFp32Params {
  const GatherSegment* segments = nullptr;  // device
  const AdamWChunk* chunks = nullptr;       // device
  int num_chunks = 0;
  float* dst = nullptr;

  const char* Validate() const;
};

cudaError_t LaunchGatherToFp32(const GatherToFp32Params& params, cudaStream_t stream);

}  // namespace lightrl
