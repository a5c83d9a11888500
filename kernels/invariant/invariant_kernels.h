// The batch-invariant numerics mode's CUDA kernels: each computes a row's result by the
// same sequence of FP32 operations as the mode's CPU op (policy/invariant_ops.cc), with the
// arithmetic of invariant_math.h, so a CUDA tensor gets the CPU's bits and neither depends
// on the batch; the one exception is the bf16 linear, on the tensor cores, batch-invariant
// but with its own bits. Their tests compare them with the CPU ops bit for bit
// (tests/rl/batch_invariant_gpu_test.cc). Owns the kernels and their launches; never syncs
// or allocates. All pointers are device pointers to contiguous row-major data; returns the
// launch's error (cudaErrorInvalidValue for sizes a kernel cannot take).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

namespace lightrl {

// out [N, M] FP32 = x [N, K] w [M, K]^T of FP32 x and w: each output the products summed
// over k = 0..K-1 in order, the CPU op's bits.
cudaError_t LaunchInvariantLinear(const float* x, const float* w, float* out, int64_t N, int64_t K,
                                  int64_t M, cudaStream_t stream);
// The product of bf16 x and w on the tensor cores, FP32 accumulation: fixed 64 x 64
// tiles and 32-deep K slices whatever N is, so a row's outputs are the same bits in any
// batch, but not the CPU loop's bits (each mma sums its products its own way).
cudaError_t LaunchInvariantLinearTc(const __nv_bfloat16* x, const __nv_bfloat16* w, float* out,
                                    int64_t N, int64_t K, int64_t M, cudaStream_t stream);

// The experts' bf16 linears of a MoE layer in one launch, each row the bits
// LaunchInvariantLinearTc gives it with its expert's weight: x [A, K] holds the rows sorted
// by expert; tiles [num_tiles, 3] (expert, first row, end row), at most 64 rows each, all of
// one expert; w [experts] the experts' [M, K] weights (device array of device pointers);
// out [A, M] FP32. `vec`: K % 8 == 0 and x and every weight 16-byte aligned.
cudaError_t LaunchInvariantGroupedLinearTc(const __nv_bfloat16* x,
                                           const __nv_bfloat16* const* w, const int64_t* tiles,
                                           int64_t num_tiles, float* out, int64_t K, int64_t M,
                                           bool vec, cudaStream_t stream);

// The same with the groups read on the device: rows offsets[e] .. offsets[e + 1] of x [A, K]
// are expert e's (e < E), for weight w[e]. The grid covers the most tiles A rows in E groups
// can make (A / 64 + E, rounded up), and a tile past the groups' does nothing, so the
// launch's shape depends on A and E only (a CUDA graph can hold it).
cudaError_t LaunchInvariantExpertLinearTc(const __nv_bfloat16* x,
                                          const __nv_bfloat16* const* w, const int64_t* offsets,
                                          int64_t E, float* out, int64_t A, int64_t K, int64_t M,
                                          bool vec, cudaStream_t stream);

// A MoE layer's dispatch on the device, in the order the host would make it: the A
// assignments expert[a] (a = token * k + slot, each in [0, E)) sorted by expert, token order
// within one (stable). order [A]: the sorted assignments; position [A]: each assignment's
// place in that order; offsets [E + 1]: where each expert's rows begin; kept [A]: 1 where the
// assignment is among the first `capacity` of its expert (all when capacity < 0), else 0.
// counts [E] is scratch. No atomics: the same bits every run.
cudaError_t LaunchInvariantMoeDispatch(const int64_t* expert, int64_t A, int64_t E,
                                       int64_t capacity, int64_t* counts, int64_t* offsets,
                                       int64_t* order, int64_t* position, float* kept,
                                       cudaStream_t stream);

// r [N] = 1 / sqrt(sum_i x[n, i]^2 (in order) / D + eps) of x [N, D].
cudaError_t LaunchInvariantRowRsqrt(const float* x, float* r, int64_t N, int64_t D, float eps,
                                    cudaStream_t stream);

// RMSNorm without autograd, in one kernel: y[n, i] = T(float(w[i]) * float(T(x[n, i] r_n)))
// with r_n as LaunchInvariantRowRsqrt computes it (T the dtype of x, w and y: FP32 or bf16),
// the bits of the autograd path's separate ops.
cudaError_t LaunchInvariantRmsNorm(const float* x, const float* w, float* y, int64_t N,
                                   int64_t D, float eps, cudaStream_t stream);
cudaError_t LaunchInvariantRmsNorm(const __nv_bfloat16* x, const __nv_bfloat16* w,
                                   __nv_bfloat16* y, int64_t N, int64_t D, float eps,
                                   cudaStream_t stream);

// sigmoid or silu of bf16 values, computed in FP32 and rounded once (the FP32 kernel's bits,
// then rounded, as the autograd path's conversions give).
cudaError_t LaunchInvariantUnary(const __nv_bfloat16* x, __nv_bfloat16* out, int64_t n, bool silu,
                                 cudaStream_t stream);

// out = sigmoid(x), or x sigmoid(x) when `silu`, elementwise over n values.
cudaError_t LaunchInvariantUnary(const float* x, float* out, int64_t n, bool silu,
                                 cudaStream_t stream);

// p [N, E] = softmax of each row of x [N, E]: its max, exponentials summed in order, divided.
cudaError_t LaunchInvariantSoftmax(const float* x, float* p, int64_t N, int64_t E,
                                   cudaStream_t stream);

// idx [N, k]: each row's k largest entries of x [N, E], largest first, lower index first
// among equals. E <= kInvariantTopKMaxEntries.
constexpr int64_t kInvariantTopKMaxEntries = 1024;
cudaError_t LaunchInvariantTopK(const float* x, int64_t* idx, int64_t N, int64_t E, int64_t k,
                                cudaStream_t stream);

// The lightning token recurrence of documents cu[doc]..cu[doc + 1] (cu: num_docs + 1
// entries) and heads h < H of q, k, v [T, H, d]: S = lambda_h S + k v^T, o = q S, with
// lambda_h = inv::InvExp(-slope[h]) (the CPU op's decay); S starts
// at init [num_docs, H, d, d] (null: zeros); last (may be null) gets each final state.
// d <= kInvariantLightningMaxDim.
constexpr int64_t kInvariantLightningMaxDim = 160;
struct InvariantLightningArgs {
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  const float* slope = nullptr;   // [H]
  const int64_t* cu = nullptr;    // [num_docs + 1]
  const float* init = nullptr;    // [num_docs, H, d, d] or null
  // Optional [num_docs]: document doc starts from entry state_index[doc] of init and its
  // last state goes to that entry of `last` (which may be init: each block reads its state
  // before it writes it).
  const int64_t* state_index = nullptr;
  int64_t num_docs = 0, H = 0, d = 0;
};
cudaError_t LaunchInvariantLightning(const InvariantLightningArgs& a, float* o, float* last,
                                     cudaStream_t stream);
// Its gradient for the output gradient g [T, H, d]: dq, dk, dv [T, H, d] (overwritten).
cudaError_t LaunchInvariantLightningBackward(const InvariantLightningArgs& a, const float* g,
                                             float* dq, float* dk, float* dv,
                                             cudaStream_t stream);

// Softmax attention of queries q [Q, H, d] over keys k, v [R, KVH, d] (head h reads KV head
// h / (H / KVH)): query i visits count[i] keys, the rows index[start[i] + j] for j in order
// (index null: rows start[i] + j). Its scores, max, exponentials, sum and weighted values in
// order, as the CPU op; o [Q, H, d]. d <= 1024. Keys and values may be bf16 instead (k16,
// v16), read as the FP32 values they are. Paged keys (page_table set): key j of query i is
// row page_table[page_row[i] * max_pages + j / page_size] * page_size + j % page_size, start
// and index unused.
struct InvariantAttentionArgs {
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  const __nv_bfloat16 *k16 = nullptr, *v16 = nullptr;
  const int64_t* start = nullptr;  // [Q]
  const int64_t* count = nullptr;  // [Q]
  const int64_t* index = nullptr;  // optional
  const int32_t* page_table = nullptr;  // optional [*, max_pages]
  const int64_t* page_row = nullptr;    // [Q] with page_table
  int64_t max_pages = 0, page_size = 0;
  int64_t Q = 0, H = 0, KVH = 0, d = 0;
  float scale = 1.0f;
};
cudaError_t LaunchInvariantAttention(const InvariantAttentionArgs& a, float* o,
                                     cudaStream_t stream);

// out [N] = log softmax(logits[n] / temperature[n])[targets[n]] of FP32 logits [N, V]: each
// row's max, its sum of exponentials in the lanes of inv::kSumLanes, one log. A target
// outside [0, V) gets NaN.
cudaError_t LaunchInvariantTokenLogprobs(const float* logits, const int64_t* targets,
                                         const float* temperature, float* out, int64_t N,
                                         int64_t V, cudaStream_t stream);

}  // namespace lightrl
