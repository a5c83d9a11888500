// The batch-invariant ops' forwards (and the lightning recurrence's backward) on CUDA
// tensors, by the kernels of kernels/invariant/: the same operations in the same order as
// the CPU loops of invariant_ops.cc, so a CUDA tensor gets the CPU's bits (the bf16 linear
// excepted: tensor cores, batch-invariant, its own bits). Called by
// invariant_ops.cc for CUDA inputs; without the kernels in the build (LIGHTRL_POLICY_CUDA)
// each fails naming the op. Inputs are FP32 and contiguous unless said; internal (torch)
// header.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace lightrl::invariant_cuda {

// out [N, M] FP32 = x [N, K] w [M, K]^T (any layout): both bf16 on the tensor cores
// (batch-invariant, its own bits), else in FP32 with the CPU's bits.
torch::Tensor Linear(const torch::Tensor& x, const torch::Tensor& w);
// [N, 1]: 1 / sqrt(mean of squares + eps) of each row of x [N, D].
torch::Tensor RowRsqrt(const torch::Tensor& x, double eps);
// sigmoid(x), or x sigmoid(x) when `silu` (FP32 out).
torch::Tensor Unary(const torch::Tensor& x, bool silu);
// Without autograd, one kernel each, in x's dtype (FP32 or bf16), the bits of the autograd
// path: RMSNorm of the rows of x [..., D] times weight [D] (weight in x's dtype), and
// sigmoid / silu.
torch::Tensor RmsNormNoGrad(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor UnaryNoGrad(const torch::Tensor& x, bool silu);
torch::Tensor Softmax(const torch::Tensor& x);
// Rows offsets[g] .. offsets[g + 1] of bf16 x [A, K] times weights[g]^T (each [M, K] bf16),
// in one launch: [A, M] FP32, each row the bits Linear gives it with its group's weight.
torch::Tensor GroupedLinear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                            const std::vector<int64_t>& offsets);
// The experts' bf16 linears with the groups on the device: rows offsets[e] .. offsets[e + 1]
// of bf16 x [A, K] times expert e's weight, the weights given by address (`weights` [E]
// int64 on the device, each a contiguous bf16 [M, K]; `vec`: K % 8 == 0 and every weight
// 16-byte aligned). [A, M] FP32, each row the bits Linear gives it with its expert's weight;
// nothing waits for the device.
torch::Tensor ExpertLinear(const torch::Tensor& x, const torch::Tensor& weights,
                           const torch::Tensor& offsets, int64_t M, bool vec);
// A MoE layer's dispatch on the device (LaunchInvariantMoeDispatch) for the assignments'
// experts [A] int64: order, position, offsets [E + 1] (int64) and kept [A] (FP32 0 / 1).
struct MoeDispatch {
  torch::Tensor order, position, offsets, kept;
};
MoeDispatch Dispatch(const torch::Tensor& expert, int64_t E, int64_t capacity);
// [N, k] int64 on x's device.
torch::Tensor TopK(const torch::Tensor& x, int64_t k);
// o [T, H, d] and the last states [N, H, d, d]; slope [H] (the decay exp(-slope) computed by
// the kernel as the CPU computes it); init undefined: zeros.
std::pair<torch::Tensor, torch::Tensor> Lightning(const torch::Tensor& q, const torch::Tensor& k,
                                                  const torch::Tensor& v, const torch::Tensor& slope,
                                                  const std::vector<int64_t>& cu,
                                                  const torch::Tensor& init);
// dq, dk, dv [T, H, d] FP32 for the output gradient g.
std::vector<torch::Tensor> LightningBackward(const torch::Tensor& q, const torch::Tensor& k,
                                             const torch::Tensor& v, const torch::Tensor& g,
                                             const torch::Tensor& slope,
                                             const std::vector<int64_t>& cu,
                                             const torch::Tensor& init);
// The recurrence of one token per row of q, k, v [B, H, d] from states[slots[b]] (states
// [S, H, d, d] FP32, rewritten in place; slots [B] int64 on the device, no two alike):
// o [B, H, d] FP32, Lightning's bits for one-token documents from those states.
torch::Tensor LightningStep(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                            const torch::Tensor& slope, const torch::Tensor& states,
                            const torch::Tensor& slots);
// Query i of q [Q, H, d] over its first count[i] positions in the paged pools k_pool, v_pool
// [R, KVH, d] (FP32 or bf16, read in place), position j at row page_table[page_row[i], j /
// page_size] * page_size + j % page_size (page_table [*, max_pages] int32; page_row, count
// [Q] int64; all on the device). Attention's bits for those rows.
torch::Tensor PagedAttention(const torch::Tensor& q, const torch::Tensor& k_pool,
                             const torch::Tensor& v_pool, const torch::Tensor& page_table,
                             const torch::Tensor& page_row, const torch::Tensor& count,
                             int64_t page_size, double scale);
// Query i of q [Q, H, d] over `count[i]` rows of k, v [R, KVH, d]: index[start[i] + j] when
// `index` is defined, else start[i] + j (start, count, index: host int64 vectors).
torch::Tensor Attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const std::vector<int64_t>& start, const std::vector<int64_t>& count,
                        const std::vector<int64_t>* index, double scale);
// [N]: log softmax(logits[n] / temperature[n])[targets[n]] (targets int64 on the device).
torch::Tensor TokenLogprobs(const torch::Tensor& logits, const torch::Tensor& targets,
                            const std::vector<float>& temperature);

}  // namespace lightrl::invariant_cuda
