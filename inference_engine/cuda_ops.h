// Torch adapter of the engine's CUDA kernels for the engine's CUDA backend: checks the
// shapes, dtypes and devices of torch tensors, takes their data pointers and the current
// CUDA stream, and calls the torch-free launchers of kernels/. Owns no
// memory beyond the outputs it returns; it never syncs. Built only with
// LIGHTRL_TORCH_CUDA (compile definition LIGHTRL_ENGINE_CUDA); internal (torch) header.
#pragma once

#include <torch/torch.h>

#include <utility>

namespace lightrl {

// Whether the kernels serve tensors of this device, dtype and head size: CUDA, bf16,
// head_dim 64 or 128. Anything else runs the torch ops.
bool CudaLightningSupported(const torch::Device& device, torch::ScalarType dtype,
                            int64_t head_dim);

// Varlen prefill from zero states. q, k, v: [T, H, d] bf16 views with unit stride on d
// and strides that are multiples of 8 (e.g. the splits of the fused qkv projection);
// cu_seqlens: [n + 1] int32 token offsets; slots: [n] int32 state slots; state: the
// [num_slots, H, d, d] FP32 pool, whose slots[i] receives sequence i's final state;
// slopes: [H] FP32. Returns o [T, H, d] bf16.
torch::Tensor LightningPrefillCuda(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& cu_seqlens,
                                   const torch::Tensor& slots, torch::Tensor& state,
                                   const torch::Tensor& slopes, int64_t max_seqlen);

// One fused decode step: state[slots[b]] = lambda * state[slots[b]] + k_b^T v_b and
// o_b = q_b state[slots[b]], for q, k, v [B, H, d] bf16 views as above. Returns o
// [B, H, d] bf16.
torch::Tensor LightningDecodeCuda(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const torch::Tensor& slots,
                                  torch::Tensor& state, const torch::Tensor& slopes);

// The softmax layers' paged KV cache (kernels/paged_attention/paged_attention.h): k_pool and
// v_pool are [rows, KVH, d] contiguous bf16 pools, page_table [R, max_pages] contiguous
// int32 (row r: the pages of the sequence in slot r), seq_rows and positions [B] int32
// (a negative row skips that sequence). Writes k, v [B, KVH, d] at each sequence's
// position.
void PagedKvAppendCuda(const torch::Tensor& k, const torch::Tensor& v,
                       const torch::Tensor& seq_rows, const torch::Tensor& positions,
                       const torch::Tensor& page_table, int64_t page_size, torch::Tensor& k_pool,
                       torch::Tensor& v_pool);

// Decode attention of q [B, H, d] bf16 over positions 0 .. positions[b] of each sequence;
// contexts up to num_partitions * partition_tokens. Returns o [B, H, d] bf16 (zeros for
// skipped rows).
torch::Tensor PagedDecodeAttentionCuda(const torch::Tensor& q, const torch::Tensor& k_pool,
                                       const torch::Tensor& v_pool, const torch::Tensor& seq_rows,
                                       const torch::Tensor& positions,
                                       const torch::Tensor& page_table, int64_t page_size,
                                       double scale, int64_t partition_tokens,
                                       int64_t num_partitions);

// The policy's RMSNorm (RMSNormImpl::forward, same bf16 roundings) in one kernel: x [T, D]
// bf16 with unit stride on D, weight [D] contiguous bf16. Returns y [T, D] contiguous bf16.
torch::Tensor RmsNormCuda(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// The lightning block's gated norm (LightningAttentionImpl::Finish before out_proj):
// sigmoid(gate) * RMSNorm(x) with eager torch's three bf16 roundings, in one kernel. gate
// [T, D] bf16 with unit stride on D; otherwise as RmsNormCuda.
torch::Tensor GatedRmsNormCuda(const torch::Tensor& x, const torch::Tensor& weight,
                               const torch::Tensor& gate, double eps);

// Whether the routing kernel serves this many experts and top-k (at most 256 and 8).
bool MoeRoutingSupported(int64_t experts, int64_t top_k);

// The policy's routing matrix (SparseMoeImpl::CombineWeights) from the router's FP32
// logits [T, E] in one kernel (kernels/moe/moe_routing.h): softmax, top_k,
// renormalised, zeros elsewhere. Returns [T, E] contiguous FP32.
torch::Tensor MoeCombineWeightsCuda(const torch::Tensor& logits, int64_t top_k);

// The same routing as (top_w [T, k] FP32, top_i [T, k] int64), what SparseMoeImpl::Route
// returns besides the probabilities, for SparseMoeImpl::ForwardRouted.
std::pair<torch::Tensor, torch::Tensor> MoeRouteCuda(const torch::Tensor& logits, int64_t top_k);

// alpha * a + beta * b for same-shaped contiguous bf16 tensors, in FP32 and rounded to
// bf16 once (eager torch rounds after each op, so results can differ by one bf16 ulp).
// Returns a new contiguous bf16 tensor.
torch::Tensor ScaledAddCuda(const torch::Tensor& a, const torch::Tensor& b, double alpha,
                            double beta);

// The decode step's MoE epilogue (kernels/moe/moe_decode_combine.h): alpha * residual + beta *
// bf16(sum_e combine[:, e] * y[e]) in one kernel, for y [E, T, D] bf16 (every expert's
// output rows), combine [T, E] FP32 and residual [T, D] bf16, all contiguous. Returns a new
// [T, D] bf16 tensor.
torch::Tensor MoeDecodeCombineCuda(const torch::Tensor& y, const torch::Tensor& combine,
                             const torch::Tensor& residual, double alpha, double beta);

// The fused sampler (kernels/sampling/sampling.h) over logits [R, V], FP32 or bf16
// with unit stride along V, and params [R, 4] contiguous FP32 on the same device: per row
// temperature (not > 0: greedy), top_p (>= 1: off), top_k (a whole number; < 1 or >= V:
// off) and the uniform in [0, 1). The token ids and logprobs are views of one buffer, so
// that one copy brings both back.
struct CudaSampledTokens {
  torch::Tensor packed;    // [12 R] uint8: the R int64 token ids, then the R FP32 logprobs
  torch::Tensor tokens;    // [R] int64, a view of packed
  torch::Tensor logprobs;  // [R] FP32, a view of packed
};
CudaSampledTokens SampleTokensCuda(const torch::Tensor& logits, const torch::Tensor& params);

// Grouped linear layers through cuBLAS's pointer-array batched GEMM (the MoE experts of a
// decode step in one call): out[g] = in_g W_g^T for g < G, where weight_ptrs [G] int64 on
// the device holds the addresses of G contiguous [N, K] bf16 matrices and `in` is [T, K]
// (shared by every g) or [G, T, K], contiguous bf16. Returns [G, T, N] bf16, accumulated
// in FP32. The pointer arrays of `in` and the output are computed on the device, so the
// call can be captured in a CUDA graph.
torch::Tensor GroupedLinearCuda(const torch::Tensor& in, const torch::Tensor& weight_ptrs,
                                int64_t out_features);

}  // namespace lightrl
