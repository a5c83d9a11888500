// Plain C++ oracles of the learner's fused kernels (kernels/train_ops/train_ops.h), in double and
// without the kernels' roundings: the tests bound the kernels' distance from these.
// Torch-free and GPU-free.
#pragma once

#include <cstdint>
#include <vector>

namespace lightrl {

// h[i] = silu(a[i]) * b[i].
std::vector<double> ReferenceSwiGlu(const std::vector<float>& a, const std::vector<float>& b);

// da[i] = dh[i] b[i] silu'(a[i]), db[i] = dh[i] silu(a[i]).
void ReferenceSwiGluBackward(const std::vector<float>& a, const std::vector<float>& b,
                             const std::vector<float>& dh, std::vector<double>* da,
                             std::vector<double>* db);

// Row-major logits [rows, vocab]: lse[r] = log sum_v exp(logits[r, v]) and logp[r] =
// logits[r, targets[r]] - lse[r] (NaN for a target outside [0, vocab)).
void ReferenceTokenLogprob(const std::vector<float>& logits, int64_t rows, int64_t vocab,
                           const std::vector<int64_t>& targets, std::vector<double>* lse,
                           std::vector<double>* logp);

// dlogits[r, v] = grad[r] ([v == targets[r]] - softmax(logits[r])[v]).
std::vector<double> ReferenceTokenLogprobGrad(const std::vector<float>& logits, int64_t rows,
                                              int64_t vocab, const std::vector<int64_t>& targets,
                                              const std::vector<float>& grad);

// out[t, :] = sum_j w[t, j] y[rows[t, j], :], y row-major [*, dim], rows and w [tokens, top_k].
std::vector<double> ReferenceMoeCombine(const std::vector<float>& y, int64_t dim,
                                        const std::vector<int64_t>& rows,
                                        const std::vector<float>& w, int64_t top_k);

// Its gradient given g [tokens, dim]: dy [num_rows, dim] (row r gets w[a] g[a / top_k] for its
// reader a, zeros where readers[r] == tokens * top_k) and dw [tokens, top_k].
void ReferenceMoeCombineBackward(const std::vector<float>& y, int64_t dim,
                                 const std::vector<int64_t>& rows,
                                 const std::vector<int64_t>& readers, const std::vector<float>& w,
                                 int64_t top_k, const std::vector<float>& g,
                                 std::vector<double>* dy, std::vector<double>* dw);

struct ReferenceAdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, weight_decay = 0.0, eps = 1e-8;
};

// One AdamW update (torch's, decoupled weight decay) at `step` (1 for the first) of the
// gradient times grad_scale, in place.
void ReferenceAdamW(std::vector<double>* master, std::vector<double>* exp_avg,
                    std::vector<double>* exp_avg_sq, const std::vector<float>& grad,
                    int64_t step, double grad_scale, const ReferenceAdamWOptions& o);

// What the multi-tensor gather writes: srcs[j] (nullptr: zeros) at dst[offsets[j],
// offsets[j] + numels[j]); the rest of dst is left as it was.
void ReferenceGatherToFp32(const std::vector<const float*>& srcs, const std::vector<int64_t>& offsets,
                           const std::vector<int64_t>& numels, std::vector<double>* dst);

}  // namespace lightrl
