// GPU tests of the paged-KV append and decode-attention kernels against the double
// precision reference: fresh random inputs every run (the seed is printed on failure),
// pages scattered over the pool, ragged contexts that are not multiples of a page or a
// partition, skipped rows, grouped-query head ratios, poisoned outputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/paged_attention/paged_attention.h"
#include "kernels/paged_attention/paged_attention_reference.h"
#include "tests/kernels/cuda_test_util.h"

#pragma nv_diag_suppress 177
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"

namespace lightrl {
namespace {

struct PagedCase {
  int num_heads;
  int num_kv_heads;
  int head_dim;
  int page_size;
  int partition_tokens;
  std::vector<int32_t> contexts;  // tokens cached before this step; < 0: a skipped row
};

std::string CaseName(const PagedCase& c) {
  return "h" + std::to_string(c.num_heads) + "_kv" + std::to_string(c.num_kv_heads) + "_d" +
         std::to_string(c.head_dim) + "_p" + std::to_string(c.page_size) + "_part" +
         std::to_string(c.partition_tokens) + "_b" + std::to_string(c.contexts.size());
}

void PrintTo(const PagedCase& c, std::ostream* os) { *os << CaseName(c); }

class PagedAttentionTest : public ::testing::TestWithParam<PagedCase> {};

// One decode step: the new token's k and v are appended to their pages, then every
// sequence attends over its whole context. Compares the pools after the append and the
// output with the reference.
TEST_P(PagedAttentionTest, AppendThenAttendMatchesReference) {
  const PagedCase& c = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int B = static_cast<int>(c.contexts.size());
  const int H = c.num_heads, KVH = c.num_kv_heads, d = c.head_dim;

  PagedAttentionReferenceProblem pr;
  pr.num_heads = H;
  pr.num_kv_heads = KVH;
  pr.head_dim = d;
  pr.page_size = c.page_size;
  pr.scale = 1.0 / std::sqrt(static_cast<double>(d));
  int max_context = 1;
  for (int32_t ctx : c.contexts) max_context = std::max(max_context, ctx + 1);
  pr.page_table_stride = (max_context + c.page_size - 1) / c.page_size + 1;
  // Sequences own disjoint pages, handed out in a shuffled order; page-table rows are a
  // permutation too, so nothing works by accident of layout.
  const int rows = B + 3;
  int num_pages = 1;
  std::vector<int32_t> row_of(B);
  std::iota(row_of.begin(), row_of.end(), 2);
  std::shuffle(row_of.begin(), row_of.end(), rng);
  for (int32_t ctx : c.contexts) num_pages += ctx >= 0 ? (ctx + c.page_size) / c.page_size : 0;
  std::vector<int32_t> free_pages(num_pages);
  std::iota(free_pages.begin(), free_pages.end(), 0);
  std::shuffle(free_pages.begin(), free_pages.end(), rng);
  pr.page_table.assign(static_cast<size_t>(rows * pr.page_table_stride), -1);
  for (int b = 0; b < B; ++b) {
    if (c.contexts[b] < 0) {
      pr.seq_rows.push_back(-1);
      pr.positions.push_back(0);
      continue;
    }
    pr.seq_rows.push_back(row_of[b]);
    pr.positions.push_back(c.contexts[b]);  // the new token's position
    for (int p = 0; p <= c.contexts[b] / c.page_size; ++p) {
      pr.page_table[row_of[b] * pr.page_table_stride + p] = free_pages.back();
      free_pages.pop_back();
    }
  }
  const int64_t pool_rows = int64_t{num_pages} * c.page_size;
  const size_t pool_elems = static_cast<size_t>(pool_rows * KVH * d);
  std::vector<float> k_exact, v_exact, q_exact, newk_exact, newv_exact;
  auto k_host = RandomBf16(pool_elems, 1.0f, rng, &k_exact);
  auto v_host = RandomBf16(pool_elems, 1.0f, rng, &v_exact);
  auto q_host = RandomBf16(static_cast<size_t>(B) * H * d, 1.0f, rng, &q_exact);
  auto newk_host = RandomBf16(static_cast<size_t>(B) * KVH * d, 1.0f, rng, &newk_exact);
  auto newv_host = RandomBf16(static_cast<size_t>(B) * KVH * d, 1.0f, rng, &newv_exact);

  // The reference's pools after the append.
  for (int b = 0; b < B; ++b) {
    if (pr.seq_rows[b] < 0) continue;
    const int64_t row = pr.CacheRow(pr.seq_rows[b], pr.positions[b]);
    for (int i = 0; i < KVH * d; ++i) {
      k_exact[row * KVH * d + i] = newk_exact[static_cast<size_t>(b) * KVH * d + i];
      v_exact[row * KVH * d + i] = newv_exact[static_cast<size_t>(b) * KVH * d + i];
    }
  }
  std::vector<double> ref(static_cast<size_t>(B) * H * d);
  ReferencePagedDecodeAttention(pr, q_exact.data(), k_exact.data(), v_exact.data(), ref.data());

  DeviceBuffer<__nv_bfloat16> k_pool(k_host), v_pool(v_host), q(q_host), new_k(newk_host),
      new_v(newv_host);
  DeviceBuffer<__nv_bfloat16> o(std::vector<__nv_bfloat16>(ref.size(), FromBits(kPoisonBits)));
  DeviceBuffer<int32_t> table(pr.page_table), seq_rows(pr.seq_rows), positions(pr.positions);
  const int parts = (max_context + c.partition_tokens - 1) / c.partition_tokens;
  DeviceBuffer<float> workspace(
      static_cast<size_t>(PagedDecodeWorkspaceFloats(B, H, d, parts)));

  PagedKvCacheView cache;
  cache.k_pool = k_pool.get();
  cache.v_pool = v_pool.get();
  cache.page_table = table.get();
  cache.page_table_stride = pr.page_table_stride;
  cache.page_size = c.page_size;
  cache.num_kv_heads = KVH;
  cache.head_dim = d;

  PagedKvAppendParams append;
  append.cache = cache;
  append.k = {new_k.get(), int64_t{KVH} * d, d};
  append.v = {new_v.get(), int64_t{KVH} * d, d};
  append.seq_rows = seq_rows.get();
  append.positions = positions.get();
  append.batch = B;
  ASSERT_EQ(append.Validate(), nullptr);
  CUDA_CHECK(LaunchPagedKvAppend(append, nullptr));

  PagedDecodeAttentionParams attn;
  attn.cache = cache;
  attn.q = {q.get(), int64_t{H} * d, d};
  attn.o = {o.get(), int64_t{H} * d, d};
  attn.seq_rows = seq_rows.get();
  attn.positions = positions.get();
  attn.batch = B;
  attn.num_heads = H;
  attn.scale = static_cast<float>(pr.scale);
  attn.partition_tokens = c.partition_tokens;
  attn.num_partitions = parts;
  attn.workspace = workspace.get();
  ASSERT_EQ(attn.Validate(), nullptr);
  CUDA_CHECK(LaunchPagedDecodeAttention(attn, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());

  // The append wrote exactly the new rows: the pools equal the reference's bit for bit.
  auto k_after = k_pool.Download(), v_after = v_pool.Download();
  int64_t pool_mismatch = 0;
  for (size_t i = 0; i < pool_elems; ++i) {
    pool_mismatch += ToFloat(k_after[i]) != k_exact[i] || ToFloat(v_after[i]) != v_exact[i];
  }
  EXPECT_EQ(pool_mismatch, 0);

  auto out_bf16 = o.Download();
  std::vector<double> out(out_bf16.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = ToFloat(out_bf16[i]);
  EXPECT_LE(RelErr(out, ref), 1e-2);
  for (int b = 0; b < B; ++b) {
    if (pr.seq_rows[b] >= 0) continue;
    for (int i = 0; i < H * d; ++i) ASSERT_EQ(out[static_cast<size_t>(b) * H * d + i], 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PagedAttentionTest,
    ::testing::Values(
        // The bench model's softmax layer (8 heads, 2 KV heads), ragged short contexts.
        PagedCase{8, 2, 128, 64, 1024, {0, 1, 63, 64, 65, 127, 300, 1000}},
        // Several partitions, lengths off every boundary, one skipped row.
        PagedCase{8, 2, 128, 64, 256, {5000, 257, -1, 129, 3333}},
        // M1's ratio (64 heads over 8 KV heads, here 16 over 2) and head_dim 64.
        PagedCase{16, 2, 128, 16, 512, {700, 1, 2049}},
        PagedCase{4, 4, 64, 64, 128, {0, 130, 511, 4097}},
        PagedCase{16, 1, 64, 32, 384, {1500, 10, -1}},
        PagedCase{8, 4, 128, 128, 128, {12000, 64}}),
    [](const ::testing::TestParamInfo<PagedCase>& info) { return CaseName(info.param); });

TEST(PagedAttentionValidate, RejectsBadParameters) {
  PagedDecodeAttentionParams p;
  EXPECT_NE(p.Validate(), nullptr);
  EXPECT_EQ(LaunchPagedDecodeAttention(p, nullptr), cudaErrorInvalidValue);
  PagedKvAppendParams a;
  EXPECT_EQ(LaunchPagedKvAppend(a, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace lightrl
