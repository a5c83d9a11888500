// GPU tests of the learner's fused kernels (kernels/train_ops/train_ops.h) against the double
// oracles: fresh random inputs every run (the seed is printed on failure), sizes on the
// 16-byte paths and off them (odd sizes, misaligned starts, padded rows), a target out of
// range, and AdamW over several steps with bf16 and FP32 gradients and a clip factor.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/train_ops/train_ops.h"
#include "kernels/train_ops/train_ops_reference.h"
#include "tests/kernels/cuda_test_util.h"

namespace lightrl {
namespace {

// got (bf16) within one bf16 ulp (plus `floor`) of want, everywhere.
void ExpectWithinUlp(const std::vector<__nv_bfloat16>& got, const std::vector<double>& want,
                     double floor, unsigned seed, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = ToFloat(got[i]);
    ASSERT_LE(std::fabs(g - want[i]), Bf16Ulp(want[i]) + floor)
        << what << " at " << i << ": " << g << " vs " << want[i] << " (seed " << seed << ")";
  }
}

class SwiGluKernel : public ::testing::TestWithParam<int64_t> {};

TEST_P(SwiGluKernel, ForwardAndBackwardMatchTheReference) {
  const unsigned seed = FreshSeed();
  std::mt19937 rng(seed);
  const int64_t n = GetParam();
  for (int offset : {0, 1}) {  // 1: a misaligned start takes the scalar path
    std::vector<float> a, b, dh;
    auto a_h = RandomBf16(n + offset, 3.0f, rng, &a);
    auto b_h = RandomBf16(n + offset, 1.0f, rng, &b);
    auto g_h = RandomBf16(n + offset, 1.0f, rng, &dh);
    DeviceBuffer<__nv_bfloat16> a_d(a_h), b_d(b_h), g_d(g_h), h_d(n + offset), da_d(n + offset),
        db_d(n + offset);
    SwiGluParams p;
    p.a = a_d.get() + offset;
    p.b = b_d.get() + offset;
    p.h = h_d.get() + offset;
    p.n = n;
    ASSERT_EQ(LaunchSwiGlu(p, nullptr), cudaSuccess);
    SwiGluBackwardParams q;
    q.a = p.a;
    q.b = p.b;
    q.dh = g_d.get() + offset;
    q.da = da_d.get() + offset;
    q.db = db_d.get() + offset;
    q.n = n;
    ASSERT_EQ(LaunchSwiGluBackward(q, nullptr), cudaSuccess);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto slice = [&](const std::vector<float>& v) {
      return std::vector<float>(v.begin() + offset, v.end());
    };
    auto sub = [&](const std::vector<__nv_bfloat16>& v) {
      return std::vector<__nv_bfloat16>(v.begin() + offset, v.end());
    };
    ExpectWithinUlp(sub(h_d.Download()), ReferenceSwiGlu(slice(a), slice(b)), 1e-30, seed, "h");
    std::vector<double> da, db;
    ReferenceSwiGluBackward(slice(a), slice(b), slice(dh), &da, &db);
    ExpectWithinUlp(sub(da_d.Download()), da, 1e-30, seed, "da");
    ExpectWithinUlp(sub(db_d.Download()), db, 1e-30, seed, "db");
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, SwiGluKernel, ::testing::Values(1, 7, 8, 8000, 65543, 1 << 20));

struct LogprobCase {
  int rows, vocab, stride;
};

class TokenLogprobKernel : public ::testing::TestWithParam<LogprobCase> {};

TEST_P(TokenLogprobKernel, ForwardAndBackwardMatchTheReference) {
  const unsigned seed = FreshSeed();
  std::mt19937 rng(seed);
  const auto c = GetParam();
  std::normal_distribution<float> normal(0.f, 4.f);
  std::uniform_int_distribution<int64_t> pick(0, c.vocab - 1);
  std::vector<float> padded(static_cast<size_t>(c.rows) * c.stride, NAN), dense(static_cast<size_t>(c.rows) * c.vocab);
  for (int r = 0; r < c.rows; ++r) {
    for (int v = 0; v < c.vocab; ++v) padded[r * c.stride + v] = dense[r * c.vocab + v] = normal(rng);
  }
  std::vector<int64_t> targets(c.rows);
  for (auto& t : targets) t = pick(rng);
  if (c.rows > 2) targets[1] = c.vocab;  // out of range: NaN, and no harm to other rows
  std::vector<float> grad(c.rows);
  for (auto& g : grad) g = normal(rng) / 4.f;

  DeviceBuffer<float> logits_d(padded), grad_d(grad), lse_d(c.rows), logp_d(c.rows);
  DeviceBuffer<int64_t> targets_d(targets);
  TokenLogprobParams p;
  p.logits = logits_d.get();
  p.targets = targets_d.get();
  p.lse = lse_d.get();
  p.logp = logp_d.get();
  p.logits_row_stride = c.stride;
  p.rows = c.rows;
  p.vocab = c.vocab;
  ASSERT_EQ(LaunchTokenLogprob(p, nullptr), cudaSuccess);
  const int64_t out_stride = c.stride;
  DeviceBuffer<__nv_bfloat16> d_d(static_cast<size_t>(c.rows) * out_stride);
  TokenLogprobBackwardParams q;
  q.logits = p.logits;
  q.targets = p.targets;
  q.lse = p.lse;
  q.grad = grad_d.get();
  q.dlogits = d_d.get();
  q.logits_row_stride = c.stride;
  q.dlogits_row_stride = out_stride;
  q.rows = c.rows;
  q.vocab = c.vocab;
  ASSERT_EQ(LaunchTokenLogprobBackward(q, nullptr), cudaSuccess);
  CUDA_CHECK(cudaDeviceSynchronize());

  std::vector<double> lse, logp;
  ReferenceTokenLogprob(dense, c.rows, c.vocab, targets, &lse, &logp);
  const auto got_lse = lse_d.Download(), got_logp = logp_d.Download();
  for (int r = 0; r < c.rows; ++r) {
    ASSERT_NEAR(got_lse[r], lse[r], 1e-5 * (1 + std::fabs(lse[r]))) << "row " << r << " seed " << seed;
    if (std::isnan(logp[r])) {
      EXPECT_TRUE(std::isnan(got_logp[r])) << "row " << r;
    } else {
      ASSERT_NEAR(got_logp[r], logp[r], 1e-5 * (1 + std::fabs(logp[r]))) << "row " << r << " seed " << seed;
    }
  }
  const auto d_ref = ReferenceTokenLogprobGrad(dense, c.rows, c.vocab, targets, grad);
  const auto d_got = d_d.Download();
  std::vector<__nv_bfloat16> got(static_cast<size_t>(c.rows) * c.vocab);
  for (int r = 0; r < c.rows; ++r) {
    for (int v = 0; v < c.vocab; ++v) got[r * c.vocab + v] = d_got[r * out_stride + v];
  }
  // exp in FP32 against double: a relative 1e-6 of |grad| on top of the bf16 rounding.
  double g_max = 0;
  for (float g : grad) g_max = std::max(g_max, static_cast<double>(std::fabs(g)));
  ExpectWithinUlp(got, d_ref, 1e-6 * g_max, seed, "dlogits");
}

INSTANTIATE_TEST_SUITE_P(Shapes, TokenLogprobKernel,
                         ::testing::Values(LogprobCase{1, 32000, 32000}, LogprobCase{5, 32000, 32004},
                                           LogprobCase{300, 4096, 4096}, LogprobCase{33, 1001, 1001},
                                           LogprobCase{4, 7, 9}));

struct CombineCase {
  int tokens, top_k, dim, padding;
};

class MoeCombineKernel : public ::testing::TestWithParam<CombineCase> {};

TEST_P(MoeCombineKernel, ForwardAndBackwardMatchTheReference) {
  const unsigned seed = FreshSeed();
  std::mt19937 rng(seed);
  const auto c = GetParam();
  const int64_t assignments = int64_t{c.tokens} * c.top_k, num_rows = assignments + c.padding;
  // Each assignment reads its own row, shuffled; `padding` rows are read by none.
  std::vector<int64_t> perm(num_rows);
  for (int64_t i = 0; i < num_rows; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int64_t> rows(perm.begin(), perm.begin() + assignments), readers(num_rows, assignments);
  for (int64_t a = 0; a < assignments; ++a) readers[rows[a]] = a;
  std::vector<float> y, g, w(assignments);
  auto y_h = RandomBf16(num_rows * c.dim, 1.0f, rng, &y);
  auto g_h = RandomBf16(int64_t{c.tokens} * c.dim, 1.0f, rng, &g);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  for (auto& v : w) v = unit(rng);
  DeviceBuffer<__nv_bfloat16> y_d(y_h), g_d(g_h), out_d(int64_t{c.tokens} * c.dim), dy_d(num_rows * c.dim);
  DeviceBuffer<int64_t> rows_d(rows), readers_d(readers);
  DeviceBuffer<float> w_d(w), dw_d(assignments);
  MoeCombineParams p;
  p.y = y_d.get();
  p.rows = rows_d.get();
  p.w = w_d.get();
  p.out = out_d.get();
  p.num_rows = num_rows;
  p.tokens = c.tokens;
  p.top_k = c.top_k;
  p.dim = c.dim;
  ASSERT_EQ(LaunchMoeCombine(p, nullptr), cudaSuccess);
  MoeCombineBackwardParams q;
  q.y = p.y;
  q.rows = p.rows;
  q.readers = readers_d.get();
  q.w = p.w;
  q.g = g_d.get();
  q.dy = dy_d.get();
  q.dw = dw_d.get();
  q.num_rows = num_rows;
  q.tokens = c.tokens;
  q.top_k = c.top_k;
  q.dim = c.dim;
  ASSERT_EQ(LaunchMoeCombineBackward(q, nullptr), cudaSuccess);
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto ref = ReferenceMoeCombine(y, c.dim, rows, w, c.top_k);
  ExpectWithinUlp(out_d.Download(), ref, 1e-6, seed, "out");
  std::vector<double> dy, dw;
  ReferenceMoeCombineBackward(y, c.dim, rows, readers, w, c.top_k, g, &dy, &dw);
  ExpectWithinUlp(dy_d.Download(), dy, 1e-30, seed, "dy");
  const auto got_dw = dw_d.Download();
  for (int64_t a = 0; a < assignments; ++a) {
    ASSERT_NEAR(got_dw[a], dw[a], 1e-6 * std::sqrt(static_cast<double>(c.dim)) * (1 + std::fabs(dw[a])))
        << "dw at " << a << " seed " << seed;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeCombineKernel,
                         ::testing::Values(CombineCase{1, 1, 8, 0}, CombineCase{37, 2, 1024, 91},
                                           CombineCase{300, 8, 264, 5}, CombineCase{5, 2, 6144, 128}));

// Segments of many sizes (across chunk boundaries), some without a source, at offsets that
// leave some 16-byte aligned and some not, into a poisoned buffer with gaps between them.
TEST(GatherToFp32Kernel, WritesEachSegmentConvertedAndNothingElse) {
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const std::vector<int64_t> sizes = {1, 7, 8, 65536 + 3, 4096, 200003, 0, 33};
  const std::vector<bool> zeros = {false, false, true, false, false, false, false, true};
  std::vector<int64_t> offsets;
  int64_t at = 0;
  std::uniform_int_distribution<int> gap(0, 9);
  for (int64_t n : sizes) {
    at += gap(rng);
    offsets.push_back(at);
    at += n;
  }
  const int64_t total = at + 5;
  const float poison = -1234.5f;
  std::vector<double> want(total, poison);
  std::vector<std::vector<float>> values(sizes.size());
  std::vector<std::unique_ptr<DeviceBuffer<__nv_bfloat16>>> src_d;
  std::vector<GatherSegment> segments;
  std::vector<const float*> ref_srcs;
  for (size_t j = 0; j < sizes.size(); ++j) {
    // A leading element makes every other source 2 bytes off 16-byte alignment.
    const int64_t lead = j % 2;
    std::vector<float> padded;
    auto host = RandomBf16(sizes[j] + lead, 3.0f, rng, &padded);
    values[j].assign(padded.begin() + lead, padded.end());
    src_d.push_back(std::make_unique<DeviceBuffer<__nv_bfloat16>>(host));
    GatherSegment seg;
    seg.src = zeros[j] ? nullptr : src_d.back()->get() + lead;
    seg.dst_offset = offsets[j];
    seg.n = sizes[j];
    segments.push_back(seg);
    ref_srcs.push_back(zeros[j] ? nullptr : values[j].data());
  }
  ReferenceGatherToFp32(ref_srcs, offsets, sizes, &want);
  const int64_t num_chunks = MakeAdamWChunks(sizes.data(), static_cast<int>(sizes.size()), nullptr, 0);
  std::vector<AdamWChunk> chunks(num_chunks);
  MakeAdamWChunks(sizes.data(), static_cast<int>(sizes.size()), chunks.data(), num_chunks);
  DeviceBuffer<GatherSegment> segments_d(segments);
  DeviceBuffer<AdamWChunk> chunks_d(chunks);
  DeviceBuffer<float> dst_d(std::vector<float>(total, poison));
  GatherToFp32Params p;
  p.segments = segments_d.get();
  p.chunks = chunks_d.get();
  p.num_chunks = static_cast<int>(num_chunks);
  p.dst = dst_d.get();
  ASSERT_EQ(LaunchGatherToFp32(p, nullptr), cudaSuccess);
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = dst_d.Download();
  for (int64_t i = 0; i < total; ++i) {
    // bf16 -> FP32 is exact: equality, including the poison left between segments.
    ASSERT_EQ(static_cast<double>(got[i]), want[i]) << "element " << i;
  }
  p.dst = nullptr;
  EXPECT_EQ(LaunchGatherToFp32(p, nullptr), cudaErrorInvalidValue);
}

TEST(MasterAdamWKernel, StepsMatchTheReferenceWithBf16AndFp32Gradients) {
  const unsigned seed = FreshSeed();
  std::mt19937 rng(seed);
  const std::vector<int64_t> sizes = {1, 70000, 12345, 131072};
  const std::vector<bool> bf16_grad = {true, false, true, false};
  const std::vector<bool> with_out = {true, false, true, true};
  ReferenceAdamWOptions o;
  o.lr = 2e-3;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.weight_decay = 0.1;
  o.eps = 1e-8;
  const size_t T = sizes.size();
  std::vector<std::vector<double>> master(T), m(T), v(T);
  std::vector<std::unique_ptr<DeviceBuffer<float>>> master_d, m_d, v_d, gf_d;
  std::vector<std::unique_ptr<DeviceBuffer<__nv_bfloat16>>> gb_d, out_d;
  std::normal_distribution<float> normal(0.f, 1.f);
  for (size_t i = 0; i < T; ++i) {
    std::vector<float> w(sizes[i]);
    for (auto& x : w) x = normal(rng);
    master[i].assign(w.begin(), w.end());
    m[i].assign(sizes[i], 0.0);
    v[i].assign(sizes[i], 0.0);
    master_d.push_back(std::make_unique<DeviceBuffer<float>>(w));
    m_d.push_back(std::make_unique<DeviceBuffer<float>>(std::vector<float>(sizes[i], 0.f)));
    v_d.push_back(std::make_unique<DeviceBuffer<float>>(std::vector<float>(sizes[i], 0.f)));
    gf_d.push_back(std::make_unique<DeviceBuffer<float>>(sizes[i]));
    gb_d.push_back(std::make_unique<DeviceBuffer<__nv_bfloat16>>(sizes[i]));
    out_d.push_back(std::make_unique<DeviceBuffer<__nv_bfloat16>>(sizes[i]));
  }
  for (int64_t step = 1; step <= 3; ++step) {
    const float scale = step == 2 ? 0.3f : 1.0f;  // a clipped update
    DeviceBuffer<float> scale_d(std::vector<float>{scale});
    std::vector<AdamWTensor> tensors(T);
    std::vector<std::vector<float>> grads(T);
    for (size_t i = 0; i < T; ++i) {
      if (bf16_grad[i]) {
        gb_d[i]->Upload(RandomBf16(sizes[i], 1e-2f, rng, &grads[i]));
        tensors[i].grad = gb_d[i]->get();
      } else {
        grads[i].resize(sizes[i]);
        for (auto& g : grads[i]) g = 1e-2f * normal(rng);
        gf_d[i]->Upload(grads[i]);
        tensors[i].grad = gf_d[i]->get();
      }
      tensors[i].grad_bf16 = bf16_grad[i];
      tensors[i].master = master_d[i]->get();
      tensors[i].exp_avg = m_d[i]->get();
      tensors[i].exp_avg_sq = v_d[i]->get();
      tensors[i].param_out = with_out[i] ? out_d[i]->get() : nullptr;
      tensors[i].n = sizes[i];
      tensors[i].bias_correction1 = static_cast<float>(1 - std::pow(o.beta1, step));
      tensors[i].bias_correction2 = static_cast<float>(1 - std::pow(o.beta2, step));
      ReferenceAdamW(&master[i], &m[i], &v[i], grads[i], step, scale, o);
    }
    const int64_t num_chunks = MakeAdamWChunks(sizes.data(), static_cast<int>(T), nullptr, 0);
    std::vector<AdamWChunk> chunks(num_chunks);
    ASSERT_EQ(MakeAdamWChunks(sizes.data(), static_cast<int>(T), chunks.data(), num_chunks), num_chunks);
    DeviceBuffer<AdamWTensor> tensors_d(tensors);
    DeviceBuffer<AdamWChunk> chunks_d(chunks);
    MasterAdamWParams p;
    p.tensors = tensors_d.get();
    p.chunks = chunks_d.get();
    p.num_chunks = static_cast<int>(num_chunks);
    p.grad_scale = scale_d.get();
    p.lr = static_cast<float>(o.lr);
    p.beta1 = static_cast<float>(o.beta1);
    p.beta2 = static_cast<float>(o.beta2);
    p.weight_decay = static_cast<float>(o.weight_decay);
    p.eps = static_cast<float>(o.eps);
    ASSERT_EQ(LaunchMasterAdamW(p, nullptr), cudaSuccess);
    CUDA_CHECK(cudaDeviceSynchronize());
    for (size_t i = 0; i < T; ++i) {
      const auto w = master_d[i]->Download(), mm = m_d[i]->Download(), vv = v_d[i]->Download();
      const auto out = out_d[i]->Download();
      for (int64_t j = 0; j < sizes[i]; ++j) {
        // The update itself is ~lr; FP32 keeps it to a few ulps of the weight.
        ASSERT_NEAR(w[j], master[i][j], 1e-6 * (1 + std::fabs(master[i][j])))
            << "tensor " << i << " at " << j << " step " << step << " seed " << seed;
        // m is a difference of terms of size |g| ~ 1e-2 and can cancel: FP32 rounds at ~1e-10.
        ASSERT_NEAR(mm[j], m[i][j], 1e-5 * std::fabs(m[i][j]) + 1e-9) << "m, tensor " << i << " at " << j;
        ASSERT_NEAR(vv[j], v[i][j], 1e-5 * std::fabs(v[i][j]) + 1e-16) << "v, tensor " << i << " at " << j;
        if (with_out[i]) {
          ASSERT_EQ(Bits(out[j]), Bits(__float2bfloat16_rn(w[j]))) << "weights, tensor " << i << " at " << j;
        }
      }
    }
  }
  // Parameters the launcher must refuse.
  MasterAdamWParams bad;
  bad.num_chunks = 1;
  EXPECT_EQ(LaunchMasterAdamW(bad, nullptr), cudaErrorInvalidValue);
  bad.num_chunks = 0;
  bad.beta1 = 1.0f;
  EXPECT_NE(bad.Validate(), nullptr);
  (void)cudaGetLastError();
}

}  // namespace
}  // namespace lightrl
