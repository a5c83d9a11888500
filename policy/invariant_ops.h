// The ops of the batch-invariant numerics mode (numerics.batch_invariant): each computes a
// row's (a token's, a query's, a document's) result by one fixed sequence of FP32
// operations, whatever else shares its batch, so the engine's prefill, its decode steps
// and the learner's packed forward give a token the same bits. Matmuls reduce over K in
// order, norms and softmaxes over their row in order, the lightning attention is the token
// recurrence (prefill, decode and training alike), softmax attention visits a query's keys
// in order; transcendental functions are the scalar libm ones (never a vector version for
// some elements and a scalar one for the tail). The differentiable ones have backwards that
// are the exact gradient of that forward (their own reduction order is free).
//
// CUDA tensors run the kernels of kernels/invariant/ (through policy/invariant_cuda.h),
// which perform the same FP32 operations in the same order, exp and log included
// (kernels/invariant/invariant_math.h): a CUDA tensor gets the CPU's bits, except through
// a bf16 linear, which runs on the tensor cores with fixed tiles (batch-invariant still, so
// CUDA engine and CUDA learner agree; a CPU learner and a CUDA engine agree in FP32 only).
// Internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace lightrl {

// Host values as a tensor on `device` (int64, or FP32 for floats). For CUDA, copied from
// pinned memory without waiting: the stream orders the copy before the kernels that read
// it, and the caching host allocator keeps the pinned block until the copy has run.
torch::Tensor HostToDevice(const std::vector<int64_t>& values, const torch::Device& device);
torch::Tensor HostToDevice(const std::vector<float>& values, const torch::Device& device);

// x [N, K] W^T for W [M, K]: FP32 products summed over k = 0..K-1 in order, rounded once to
// `out_dtype` (x's dtype when undefined / kUndefined). Differentiable in x and W.
torch::Tensor InvariantLinear(const torch::Tensor& x, const torch::Tensor& w,
                              c10::optional<torch::ScalarType> out_dtype = c10::nullopt);

// Rows offsets[g] .. offsets[g + 1] of x [A, K] times weights[g]^T ([M, K] each), in x's
// dtype: each row the bits InvariantLinear(row, weights[g]) gives it. bf16 CUDA x and weights
// run all groups in one launch (under autograd too, the backward group by group); anything
// else group by group. Differentiable in x and the weights.
torch::Tensor InvariantGroupedLinear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                     const std::vector<int64_t>& offsets);

// RMSNorm of each row of x [..., D] (FP32 statistics, normalised value rounded to x's dtype,
// then times weight in x's dtype), as RMSNormImpl computes it. Differentiable.
torch::Tensor InvariantRmsNorm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// Elementwise, in FP32 with libm's expf, rounded to x's dtype. Differentiable.
torch::Tensor InvariantSilu(const torch::Tensor& x);
torch::Tensor InvariantSigmoid(const torch::Tensor& x);

// Softmax over the last dim of FP32 x [N, E]. Differentiable.
torch::Tensor InvariantSoftmax(const torch::Tensor& x);

// Indices [N, k] int64 of each row's k largest entries, largest first, the lower index
// first among equals. Not differentiable (indices).
torch::Tensor InvariantTopK(const torch::Tensor& x, int64_t k);

// cos and sin [T, rotary_dim] FP32 of NeoX-style rotary embedding at `positions` [T].
std::pair<torch::Tensor, torch::Tensor> InvariantRopeTables(const torch::Tensor& positions,
                                                            int64_t rotary_dim, double theta);

// Lightning attention as its token recurrence, per document and head: S = exp(-slope) S +
// k v^T, o = q S. q, k, v [T, H, d] packed by cu_seqlens (documents back to back);
// init_states [N, H, d, d] FP32 (undefined: zeros) start each document. Returns o [T, H, d]
// FP32 and, when final_states is not null, each document's last state [N, H, d, d].
// Differentiable in q, k and v (from zero initial states only).
torch::Tensor InvariantLightning(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const torch::Tensor& slope,
                                 const std::vector<int64_t>& cu_seqlens,
                                 const torch::Tensor& init_states = {},
                                 torch::Tensor* final_states = nullptr);

// The engine's decode step of a lightning layer: one token per row of q, k, v [B, H, d]
// from states[slots[b]] (states [S, H, d, d] FP32 on q's device, rewritten in place with
// each row's new state; slots [B] int64 on that device, no two alike). Returns o [B, H, d]
// FP32, InvariantLightning's bits for one-token documents from those states. Not
// differentiable. On CUDA nothing waits for the device (a CUDA graph can hold it).
torch::Tensor InvariantLightningStep(const torch::Tensor& q, const torch::Tensor& k,
                                     const torch::Tensor& v, const torch::Tensor& slope,
                                     const torch::Tensor& states, const torch::Tensor& slots);

// Causal softmax attention within each packed document: q [T, H, d], k, v [T, KVH, d]
// (grouped heads). Each query's scores, max, exponentials, sum and weighted values over keys
// 0..its position, in order; FP32, rounded to q's dtype. Differentiable in q, k and v.
torch::Tensor InvariantAttention(const torch::Tensor& q, const torch::Tensor& k,
                                 const torch::Tensor& v, const std::vector<int64_t>& cu_seqlens,
                                 double scale);

// InvariantAttention's backward as its CUDA tensors run it, on any device (its order is
// free): dq, dk, dv for the output gradient g [T, H, d], the forward recomputed through torch
// ops over documents padded to the longest of their group (longest first, each group's
// scores within max_elements), all in one autograd pass. FP32 inputs.
std::vector<torch::Tensor> InvariantAttentionGrad(const torch::Tensor& q, const torch::Tensor& k,
                                                  const torch::Tensor& v, const torch::Tensor& g,
                                                  const std::vector<int64_t>& cu_seqlens,
                                                  double scale,
                                                  int64_t max_elements = int64_t{1} << 26);

// The same for one query per row over keys stored elsewhere (the engine's paged KV): query
// b attends to rows key_rows[b] (in position order) of k_pool, v_pool [R, KVH, d].
torch::Tensor InvariantPagedAttention(const torch::Tensor& q, const torch::Tensor& k_pool,
                                      const torch::Tensor& v_pool,
                                      const std::vector<std::vector<int64_t>>& key_rows,
                                      double scale);

// The same with the keys found through a page table, on q's device: query i visits its
// positions j = 0 .. count[i] - 1, each at row page_table[page_row[i], j / page_size] *
// page_size + j % page_size of the pools (page_table [*, max_pages] int32; page_row, count
// [Q] int64). On CUDA the pools are read in place and nothing waits for the device.
torch::Tensor InvariantPagedAttention(const torch::Tensor& q, const torch::Tensor& k_pool,
                                      const torch::Tensor& v_pool, const torch::Tensor& page_table,
                                      const torch::Tensor& page_row, const torch::Tensor& count,
                                      int64_t page_size, double scale);

// log softmax(logits[i] / temperature[i])[targets[i]] of FP32 logits [N, V]: the row's max,
// its sum of exponentials in the fixed lanes of inv::kSumLanes, one log. `temperature` has
// N entries or one for all (each > 0); targets in [0, V) (checked on the CPU; on CUDA an
// out-of-range target's logprob is NaN). Differentiable in logits.
torch::Tensor InvariantTokenLogprobs(const torch::Tensor& logits, const torch::Tensor& targets,
                                     const std::vector<double>& temperature);

}  // namespace lightrl
