// GPU tests of the RMSNorm and scaled-add kernels against the reference: fresh random
// inputs every run (the seed is printed on failure), widths on the 16-byte path and off it
// (dim 1000), strided rows whose gaps must stay untouched, single rows and many.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/rms_norm/rms_norm.h"
#include "kernels/rms_norm/rms_norm_reference.h"
#include "tests/kernels/cuda_test_util.h"

namespace lightrl {
namespace {

// Compares kernel output (bits) with the reference over `count` positions given by
// index(i): at most `ulps` bf16 ulps apart, a small relative error, and nearly all
// bit-identical.
template <typename Index>
void ExpectMatches(const std::vector<__nv_bfloat16>& got, const std::vector<float>& want,
                   int64_t count, Index index, double ulps) {
  std::vector<double> out(count), ref(count);
  int64_t identical = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t at = index(i);
    out[i] = ToFloat(got[at]);
    ref[i] = want[at];
    if (Bits(got[at]) == Bits(__float2bfloat16_rn(want[at]))) ++identical;
    const double tol = ulps * Bf16Ulp(std::max(std::fabs(out[i]), std::fabs(ref[i])));
    ASSERT_LE(std::fabs(out[i] - ref[i]), tol) << "at " << at << ": " << out[i]
                                                          << " vs " << ref[i];
  }
  EXPECT_LE(RelErr(out, ref), 1e-2);
  EXPECT_GE(static_cast<double>(identical), 0.99 * static_cast<double>(count));
}

struct NormCase {
  int rows;
  int dim;
  int x_pad;  // extra elements per input row (strided rows)
  int y_pad;
};

std::string CaseName(const NormCase& c) {
  return "t" + std::to_string(c.rows) + "_d" + std::to_string(c.dim) + "_xpad" +
         std::to_string(c.x_pad) + "_ypad" + std::to_string(c.y_pad);
}

void PrintTo(const NormCase& c, std::ostream* os) { *os << CaseName(c); }

// One case on the kernel against the reference; with `gated`, the lightning block's gated
// norm over a gate of its own stride. Strided output gaps must stay untouched.
void CheckNorm(const NormCase& c, bool gated) {
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int64_t xs = c.dim + c.x_pad, ys = c.dim + c.y_pad, gs = c.dim + c.y_pad;
  std::vector<float> x, w, g;
  // A mean offset makes the rows' scales differ from one another and from 1.
  auto x_host = RandomBf16(static_cast<size_t>(c.rows) * xs, 2.0f, rng, &x, /*mean=*/0.3f);
  auto w_host = RandomBf16(c.dim, 0.5f, rng, &w, /*mean=*/1.0f);
  auto g_host = RandomBf16(static_cast<size_t>(c.rows) * gs, 3.0f, rng, &g);
  DeviceBuffer<__nv_bfloat16> x_dev(x_host), w_dev(w_host), g_dev(g_host);
  DeviceBuffer<__nv_bfloat16> y_dev(
      std::vector<__nv_bfloat16>(static_cast<size_t>(c.rows) * ys, FromBits(kPoisonBits)));

  RmsNormParams p;
  p.x = x_dev.get();
  p.weight = w_dev.get();
  p.y = y_dev.get();
  p.x_row_stride = xs;
  p.y_row_stride = ys;
  if (gated) {
    p.gate = g_dev.get();
    p.gate_row_stride = gs;
  }
  p.rows = c.rows;
  p.dim = c.dim;
  p.eps = 1e-6f;
  ASSERT_EQ(p.Validate(), nullptr);
  CUDA_CHECK(LaunchRmsNorm(p, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto y = y_dev.Download();

  std::vector<float> ref(static_cast<size_t>(c.rows) * ys, 0.0f);
  if (gated) {
    ReferenceGatedRmsNorm(x.data(), xs, w.data(), g.data(), gs, c.rows, c.dim, p.eps, ref.data(), ys);
  } else {
    ReferenceRmsNorm(x.data(), xs, w.data(), c.rows, c.dim, p.eps, ref.data(), ys);
  }
  // The FP32 sum can put x * rsqrt(...) on the other side of a bf16 tie than the double
  // one (rarely: it is within ~1e-7 of it). The normed value then moves by one of its
  // ulps, which the weight scales to less than two ulps of y; the gate's product adds one.
  ExpectMatches(y, ref, int64_t{c.rows} * c.dim,
                [&](int64_t i) { return (i / c.dim) * ys + i % c.dim; }, gated ? 3.0 : 2.0);
  for (int t = 0; t < c.rows; ++t) {
    for (int i = c.dim; i < ys; ++i) {
      ASSERT_EQ(Bits(y[static_cast<size_t>(t) * ys + i]), kPoisonBits) << "gap written, row " << t;
    }
  }
}

class RmsNormTest : public ::testing::TestWithParam<NormCase> {};

TEST_P(RmsNormTest, MatchesReference) { CheckNorm(GetParam(), /*gated=*/false); }

// The lightning block's gated norm: sigmoid(gate) * norm with eager torch's roundings.
TEST_P(RmsNormTest, GatedMatchesReference) { CheckNorm(GetParam(), /*gated=*/true); }

INSTANTIATE_TEST_SUITE_P(
    Shapes, RmsNormTest,
    ::testing::Values(NormCase{1, 64, 0, 0}, NormCase{7, 64, 8, 0}, NormCase{256, 64, 0, 0},
                      NormCase{1, 1000, 0, 0}, NormCase{7, 1000, 3, 5},
                      NormCase{256, 1000, 0, 0}, NormCase{1, 1024, 0, 0},
                      NormCase{7, 1024, 1024, 8}, NormCase{256, 1024, 0, 0},
                      NormCase{1, 8192, 0, 0}, NormCase{7, 8192, 0, 16},
                      NormCase{256, 8192, 8192, 0}, NormCase{3, 16384, 0, 0},
                      NormCase{5, 1024, 1, 0} /* odd stride: the scalar path at dim 1024 */),
    [](const ::testing::TestParamInfo<NormCase>& info) { return CaseName(info.param); });

class ScaledAddTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(ScaledAddTest, MatchesReferenceInPlace) {
  const int64_t n = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<float> a, b;
  auto a_host = RandomBf16(n, 1.0f, rng, &a);
  auto b_host = RandomBf16(n, 3.0f, rng, &b);
  DeviceBuffer<__nv_bfloat16> a_dev(a_host), b_dev(b_host);

  ScaledAddParams p;
  p.a = a_dev.get();
  p.b = b_dev.get();
  p.out = a_dev.get();  // in place, as the runner's residual
  p.n = n;
  p.alpha = 3.5565588200778455f;
  p.beta = 1.0f;
  ASSERT_EQ(p.Validate(), nullptr);
  CUDA_CHECK(LaunchScaledAdd(p, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());

  std::vector<float> ref(n);
  ReferenceScaledAdd(a.data(), b.data(), n, p.alpha, p.beta, ref.data());
  ExpectMatches(a_dev.Download(), ref, n, [](int64_t i) { return i; }, /*ulps=*/1.0);
}

INSTANTIATE_TEST_SUITE_P(Sizes, ScaledAddTest,
                         ::testing::Values(int64_t{1}, int64_t{1000}, int64_t{64 * 1024},
                                           int64_t{256 * 8192}, int64_t{4097 * 1001}));

TEST(RmsNormValidate, RejectsBadParameters) {
  DeviceBuffer<__nv_bfloat16> buf(64);
  RmsNormParams p;
  p.x = buf.get();
  p.weight = buf.get();
  p.y = buf.get();
  p.x_row_stride = p.y_row_stride = 64;
  p.rows = 1;
  p.dim = 64;
  EXPECT_EQ(p.Validate(), nullptr);
  RmsNormParams bad = p;
  bad.dim = 0;
  EXPECT_NE(bad.Validate(), nullptr);
  EXPECT_EQ(LaunchRmsNorm(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.x_row_stride = 32;
  EXPECT_NE(bad.Validate(), nullptr);
  bad = p;
  bad.weight = nullptr;
  EXPECT_NE(bad.Validate(), nullptr);
  bad = p;
  bad.gate = buf.get();
  bad.gate_row_stride = 8;
  EXPECT_NE(bad.Validate(), nullptr);
  ScaledAddParams s;
  s.a = s.b = s.out = buf.get();
  s.n = -1;
  EXPECT_NE(s.Validate(), nullptr);
  EXPECT_EQ(LaunchScaledAdd(s, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace lightrl
