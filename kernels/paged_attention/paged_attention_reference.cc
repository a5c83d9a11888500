#include "kernels/paged_attention/paged_attention_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace lightrl {
namespace {

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "paged attention reference: %s\n", what);
  std::abort();
}

}  // namespace

int64_t PagedAttentionReferenceProblem::CacheRow(int32_t r, int64_t p) const {
  return int64_t{page_table[static_cast<size_t>(r * page_table_stride + p / page_size)]} *
             page_size +
         p % page_size;
}

void PagedAttentionReferenceProblem::Validate() const {
  if (num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
    Fail("num_heads must be a positive multiple of num_kv_heads");
  }
  if (head_dim <= 0 || page_size <= 0 || page_table_stride <= 0) Fail("sizes must be positive");
  if (seq_rows.size() != positions.size()) Fail("seq_rows and positions differ in length");
  for (size_t b = 0; b < seq_rows.size(); ++b) {
    if (seq_rows[b] < 0) continue;
    if (positions[b] < 0 || positions[b] / page_size >= page_table_stride) {
      Fail("a position is outside its page-table row");
    }
    if (static_cast<size_t>((seq_rows[b] + 1) * page_table_stride) > page_table.size()) {
      Fail("a sequence row is outside the page table");
    }
  }
}

void ReferencePagedDecodeAttention(const PagedAttentionReferenceProblem& pr, const float* q,
                                   const float* k_pool, const float* v_pool, double* out) {
  pr.Validate();
  const int H = pr.num_heads, KVH = pr.num_kv_heads, d = pr.head_dim;
  const int group = H / KVH;
  std::vector<double> scores;
  for (int b = 0; b < pr.batch(); ++b) {
    for (int h = 0; h < H; ++h) {
      double* o = out + (int64_t{b} * H + h) * d;
      std::fill(o, o + d, 0.0);
      if (pr.seq_rows[b] < 0) continue;
      const float* qv = q + (int64_t{b} * H + h) * d;
      const int kvh = h / group;
      const int64_t context = int64_t{pr.positions[b]} + 1;
      scores.assign(static_cast<size_t>(context), 0.0);
      double top = -INFINITY;
      for (int64_t t = 0; t < context; ++t) {
        const float* kv = k_pool + (pr.CacheRow(pr.seq_rows[b], t) * KVH + kvh) * d;
        double s = 0.0;
        for (int i = 0; i < d; ++i) s += double{qv[i]} * kv[i];
        scores[t] = s * pr.scale;
        top = std::max(top, scores[t]);
      }
      double total = 0.0;
      for (int64_t t = 0; t < context; ++t) {
        const double w = std::exp(scores[t] - top);
        total += w;
        const float* vv = v_pool + (pr.CacheRow(pr.seq_rows[b], t) * KVH + kvh) * d;
        for (int i = 0; i < d; ++i) o[i] += w * vv[i];
      }
      for (int i = 0; i < d; ++i) o[i] /= total;
    }
  }
}

}  // namespace lightrl
