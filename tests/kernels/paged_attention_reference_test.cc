// The paged decode-attention oracle against facts that do not depend on how it computes:
// where pages lie in the pool changes nothing, equal keys average the values, a dominant
// key selects its value, and each query head reads its own group's KV head.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/paged_attention/paged_attention_reference.h"

namespace lightrl {
namespace {

struct Cache {
  PagedAttentionReferenceProblem pr;
  std::vector<float> q, k, v;  // q [B, H, d]; pools [rows, KVH, d]
};

// One sequence of `context` positions (its new token included) laid out on pages in the
// order given by `page_order`.
Cache MakeCache(int H, int KVH, int d, int page_size, int context,
                const std::vector<int32_t>& page_order, std::mt19937& rng) {
  Cache c;
  c.pr.num_heads = H;
  c.pr.num_kv_heads = KVH;
  c.pr.head_dim = d;
  c.pr.page_size = page_size;
  c.pr.page_table_stride = static_cast<int64_t>(page_order.size());
  c.pr.page_table = page_order;
  c.pr.seq_rows = {0};
  c.pr.positions = {context - 1};
  c.pr.scale = 0.3;
  std::normal_distribution<float> normal;
  c.q.resize(static_cast<size_t>(H) * d);
  for (float& x : c.q) x = normal(rng);
  c.k.resize(page_order.size() * page_size * KVH * d);
  c.v.resize(c.k.size());
  for (float& x : c.k) x = normal(rng);
  for (float& x : c.v) x = normal(rng);
  return c;
}

std::vector<double> Attend(const Cache& c) {
  std::vector<double> out(c.q.size());
  ReferencePagedDecodeAttention(c.pr, c.q.data(), c.k.data(), c.v.data(), out.data());
  return out;
}

TEST(PagedAttentionReference, PagePlacementDoesNotMatter) {
  std::mt19937 rng(std::random_device{}());
  const int H = 4, KVH = 2, d = 8, ps = 4, context = 13, pages = 4;
  Cache a = MakeCache(H, KVH, d, ps, context, {0, 1, 2, 3}, rng);
  // The same logical cache with its pages moved to other physical places.
  std::vector<int32_t> order = {2, 0, 3, 1};
  Cache b = a;
  b.pr.page_table = order;
  const size_t page_elems = static_cast<size_t>(ps) * KVH * d;
  for (int p = 0; p < pages; ++p) {
    std::copy_n(a.k.begin() + p * page_elems, page_elems, b.k.begin() + order[p] * page_elems);
    std::copy_n(a.v.begin() + p * page_elems, page_elems, b.v.begin() + order[p] * page_elems);
  }
  EXPECT_EQ(Attend(a), Attend(b));
}

TEST(PagedAttentionReference, EqualKeysAverageTheValuesOfTheirGroup) {
  std::mt19937 rng(std::random_device{}());
  const int H = 4, KVH = 2, d = 6, ps = 3, context = 7;
  Cache c = MakeCache(H, KVH, d, ps, context, {1, 0, 2}, rng);
  for (size_t i = 0; i < c.k.size(); ++i) c.k[i] = 0.5f;
  auto out = Attend(c);
  for (int h = 0; h < H; ++h) {
    const int kvh = h / (H / KVH);
    for (int i = 0; i < d; ++i) {
      double mean = 0;
      for (int t = 0; t < context; ++t) mean += c.v[(c.pr.CacheRow(0, t) * KVH + kvh) * d + i];
      EXPECT_NEAR(out[h * d + i], mean / context, 1e-12);
    }
  }
}

TEST(PagedAttentionReference, DominantKeySelectsItsValueAndSkippedRowsAreZero) {
  std::mt19937 rng(std::random_device{}());
  const int H = 2, KVH = 1, d = 4, ps = 2, context = 5;
  Cache c = MakeCache(H, KVH, d, ps, context, {2, 1, 0}, rng);
  const int64_t hot = c.pr.CacheRow(0, 3);
  for (int i = 0; i < d; ++i) {
    c.q[i] = c.q[d + i] = 1.f;
    c.k[hot * d + i] = 100.f;
  }
  auto out = Attend(c);
  for (int h = 0; h < H; ++h) {
    for (int i = 0; i < d; ++i) EXPECT_NEAR(out[h * d + i], c.v[hot * d + i], 1e-9);
  }
  c.pr.seq_rows = {-1};
  for (double x : Attend(c)) EXPECT_EQ(x, 0.0);
}

}  // namespace
}  // namespace lightrl
