// Plain C++ oracle of decode attention over a paged KV cache (the softmax layers' decode
// step), accumulated in double. Torch-free and GPU-free; the CUDA kernels of
// kernels/paged_attention/paged_attention.h are tested against it.
#pragma once

#include <cstdint>
#include <vector>

namespace lightrl {

struct PagedAttentionReferenceProblem {
  int num_heads = 0;     // H (query heads)
  int num_kv_heads = 0;  // KVH; query head h reads KV head h / (H / KVH)
  int head_dim = 0;      // d
  int page_size = 0;
  int64_t page_table_stride = 0;
  std::vector<int32_t> page_table;  // [rows, page_table_stride]
  std::vector<int32_t> seq_rows;    // [batch]; negative: that sequence's output is zeros
  std::vector<int32_t> positions;   // [batch]; the context is positions 0 .. positions[b]
  double scale = 1.0;

  int batch() const { return static_cast<int>(seq_rows.size()); }
  // Cache row of position p of the sequence whose page-table row is r.
  int64_t CacheRow(int32_t r, int64_t p) const;
  void Validate() const;  // aborts with a message on inconsistent shapes (a test bug)
};

// q: [batch, H, d]; k_pool, v_pool: [rows, KVH, d]; out: [batch, H, d], all row-major.
//   out[b, h] = sum_t softmax_t(scale * q[b, h] . k[t]) v[t],  t = 0 .. positions[b]
void ReferencePagedDecodeAttention(const PagedAttentionReferenceProblem& problem, const float* q,
                                   const float* k_pool, const float* v_pool, double* out);

}  // namespace lightrl
