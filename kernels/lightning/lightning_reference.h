// Plain C++ oracles for lightning attention with MiniMax's per-head decay: the token
// recurrence (the definition) and the chunked intra/inter-block form, varlen, with
// initial and final states, accumulated in double. Torch-free and GPU-free; the CUDA
// kernels beside it in kernels/lightning/ are tested against these and nothing else lives here.
#pragma once

#include <cstdint>
#include <vector>

namespace lightrl {

// One batch of sequences packed along the token axis.
struct LightningReferenceProblem {
  int num_heads = 0;                // H
  int head_dim = 0;                 // d (d_k == d_v)
  std::vector<int32_t> cu_seqlens;  // [num_seqs + 1], cu_seqlens[0] == 0, non-decreasing
  std::vector<float> slopes;        // [H]; lambda_h = exp(-slopes[h])
  bool reverse = false;             // time runs from the last token of each sequence back

  int num_seqs() const { return static_cast<int>(cu_seqlens.size()) - 1; }
  int64_t num_tokens() const { return cu_seqlens.empty() ? 0 : cu_seqlens.back(); }
  // Elements of one sequence's state for all heads: H * d * d.
  int64_t state_elems() const { return int64_t{num_heads} * head_dim * head_dim; }
  // Aborts with a message on inconsistent shapes (a test bug, not a runtime condition).
  void Validate() const;
};

// Layouts: q, k, v and out are [num_tokens, H, d] row-major; initial_state (nullptr for
// zeros) and final_state (nullptr to skip) are [num_seqs, H, d_k, d_v] row-major.
//   S_t = lambda S_{t-1} + k_t^T v_t,  o_t = q_t S_t   (t in the problem's time order)
void ReferenceLightningRecurrence(const LightningReferenceProblem& problem, const float* q,
                                  const float* k, const float* v,
                                  const double* initial_state, double* out,
                                  double* final_state);

// The same function in blocks of block_size tokens (the last block of a sequence may be
// short): intra-block weight lambda^(i-j) for j <= i, inter-block lambda^(i+1) q_i S_prev,
// state update S <- lambda^m S + sum_j lambda^(m-1-j) k_j^T v_j for a block of m tokens.
void ReferenceLightningChunked(const LightningReferenceProblem& problem, int block_size,
                               const float* q, const float* k, const float* v,
                               const double* initial_state, double* out,
                               double* final_state);

// MiniMax's slope for head h of layer l out of L layers with H heads:
// 2^(-8(h+1)/H) * (1 - l/(L-1+1e-5) + 1e-5), computed in double and rounded to float.
std::vector<float> MiniMaxSlopes(int num_heads, int layer, int num_layers);

}  // namespace lightrl
