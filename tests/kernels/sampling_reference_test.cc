// The sampling oracle against hand-worked rows (the top-p boundary, ties, the draw), and
// against the engine's torch sampler on fresh random logits: the same tokens wherever
// FP32 rounding cannot move a decision, the same logprobs within 1e-5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/sampling/sampling_reference.h"
#include "inference_engine/sampler.h"

namespace lightrl {
namespace {

// Logits whose softmax is `probs` (up to a constant).
std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> x;
  for (double p : probs) x.push_back(static_cast<float>(std::log(p)));
  return x;
}

SamplingReferenceRow Row(double temperature, double top_p, int64_t top_k, double uniform) {
  SamplingReferenceRow row;
  row.temperature = temperature;
  row.top_p = top_p;
  row.top_k = top_k;
  row.uniform = uniform;
  return row;
}

TEST(ReferenceSample, GreedyTakesTheLowestIdAmongEqualMaxima) {
  const std::vector<float> x = {0.5f, 2.0f, -1.0f, 2.0f, 2.0f};
  const auto r = ReferenceSample(x.data(), 5, Row(0.0, 0.1, 1, 0.99));
  EXPECT_EQ(r.token, 1);
  EXPECT_EQ(r.num_kept, 1);
  double sum = 0;
  for (float v : x) sum += std::exp(double{v});
  EXPECT_NEAR(r.logprob, 2.0 - std::log(sum), 1e-12);
  // A temperature that is 0 in FP32 is greedy too.
  EXPECT_EQ(ReferenceSample(x.data(), 5, Row(1e-50, 1.0, 0, 0.99)).token, 1);
}

TEST(ReferenceSample, TopPKeepsATokenWhileTheMassBeforeItIsBelowTopP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at ids 2, 0, 3, 1.
  const auto x = LogitsOf({0.3, 0.05, 0.5, 0.15});
  // Masses before, in order: 0, 0.5, 0.8, 0.95.
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.4, 0, 0.9)).num_kept, 1);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.7, 0, 0.9)).num_kept, 2);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.9, 0, 0.9)).num_kept, 3);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.99, 0, 0.9)).num_kept, 4);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 1.0, 0, 0.9)).num_kept, 4);
  // The first token stays for any top_p.
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 1e-9, 0, 0.9)).token, 2);
  // top_p 0.7: 0.5 and 0.3 kept, renormalised over 0.8.
  const auto dist = ReferenceSamplingDistribution(x.data(), 4, Row(1.0, 0.7, 0, 0.5));
  EXPECT_NEAR(dist[2], 0.625, 1e-7);  // the logits are FP32
  EXPECT_NEAR(dist[0], 0.375, 1e-7);
  EXPECT_EQ(dist[1], 0.0);
  EXPECT_EQ(dist[3], 0.0);
  const auto r = ReferenceSample(x.data(), 4, Row(1.0, 0.7, 0, 0.5));
  EXPECT_NEAR(r.top_p_margin, 0.1, 1e-6);  // 0.8 - 0.7 (0.7 - 0.5 is farther)
}

TEST(ReferenceSample, DrawsByTheKeptCdfInDescendingOrder) {
  const auto x = LogitsOf({0.3, 0.05, 0.5, 0.15});
  // Kept 0.5 (id 2) and 0.3 (id 0) of 0.8: uniforms below 0.625 take id 2.
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.7, 0, 0.0)).token, 2);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.7, 0, 0.6)).token, 2);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.7, 0, 0.65)).token, 0);
  // Rounding at the top of the cdf stays on the last kept token.
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 0.7, 0, 0.99999999)).token, 0);
  // Unfiltered: 0.5, 0.3, 0.15, 0.05 in that order.
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 1.0, 0, 0.49)).token, 2);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 1.0, 0, 0.51)).token, 0);
  EXPECT_EQ(ReferenceSample(x.data(), 4, Row(1.0, 1.0, 0, 0.81)).token, 3);
  const auto r = ReferenceSample(x.data(), 4, Row(1.0, 1.0, 0, 0.97));
  EXPECT_EQ(r.token, 1);
  EXPECT_NEAR(r.draw_margin, 0.02, 1e-6);  // the last token's upper end is no boundary
  EXPECT_NEAR(r.logprob, std::log(0.05), 1e-6);
}

TEST(ReferenceSample, TopKKeepsTheLowestIdsAmongEqualLogitsAndCombinesWithTopP) {
  const std::vector<float> x = {1.0f, 2.0f, 2.0f, 2.0f, 0.0f};
  const auto dist = ReferenceSamplingDistribution(x.data(), 5, Row(1.0, 1.0, 2, 0.5));
  EXPECT_EQ(dist, (std::vector<double>{0.0, 0.5, 0.5, 0.0, 0.0}));
  EXPECT_EQ(ReferenceSample(x.data(), 5, Row(1.0, 1.0, 2, 0.49)).token, 1);
  EXPECT_EQ(ReferenceSample(x.data(), 5, Row(1.0, 1.0, 2, 0.51)).token, 2);
  EXPECT_EQ(ReferenceSample(x.data(), 5, Row(1.0, 1.0, 5, 0.5)).num_kept, 5);  // k >= V: off
  // Top-p alone keeps two of the three equal maxima (mass before the third is ~0.55).
  EXPECT_EQ(ReferenceSample(x.data(), 5, Row(1.0, 0.5, 0, 0.5)).num_kept, 2);
  // Together the shorter prefix wins, from either side.
  EXPECT_EQ(ReferenceSample(x.data(), 5, Row(1.0, 0.5, 1, 0.5)).num_kept, 1);
  EXPECT_EQ(ReferenceSample(x.data(), 5, Row(1.0, 0.5, 4, 0.5)).num_kept, 2);
}

TEST(ReferenceSample, TemperatureScalesTheLogitsBeforeTheSoftmax) {
  const std::vector<float> x = {1.0f, 3.0f, -2.0f};
  const auto r = ReferenceSample(x.data(), 3, Row(0.5, 1.0, 0, 0.1));
  EXPECT_EQ(r.token, 1);
  double sum = 0;
  for (float v : x) sum += std::exp(double{v} / 0.5);
  EXPECT_NEAR(r.logprob, 6.0 - std::log(sum), 1e-12);
}

// Distinct logits at least `gap` apart in a random id order, so that FP32 probabilities
// sort as the logits do; or, with `quantum` > 0, logits rounded to multiples of it, so that
// many are equal.
std::vector<float> RandomLogits(int64_t vocab, double scale, double gap, double quantum,
                                std::mt19937& rng) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(vocab);
  for (auto& e : v) e = normal(rng);
  std::sort(v.begin(), v.end());
  for (size_t i = 1; i < v.size(); ++i) v[i] = std::max(v[i], v[i - 1] + gap);
  std::shuffle(v.begin(), v.end(), rng);
  std::vector<float> x(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    x[i] = static_cast<float>(quantum > 0 ? std::round(v[i] / quantum) * quantum : v[i]);
  }
  return x;
}

// Mixed options in one batch: greedy, plain temperature, top-k (1, small, large), top-p
// (tiny, moderate, 1) and both.
SamplingReferenceRow RandomRow(int64_t vocab, std::mt19937& rng) {
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  std::uniform_int_distribution<int> kind(0, 7);
  SamplingReferenceRow row;
  row.uniform = u01(rng);
  row.temperature = 0.5 + u01(rng);
  const int64_t small_k = 1 + static_cast<int64_t>(u01(rng) * 20);
  const int64_t large_k = 1 + static_cast<int64_t>(u01(rng) * (vocab - 1));
  switch (kind(rng)) {
    case 0: row.temperature = 0.0; break;
    case 1: break;
    case 2: row.top_k = 1; break;
    case 3: row.top_k = u01(rng) < 0.5 ? small_k : large_k; break;
    case 4: row.top_p = 1e-6; break;
    case 5: row.top_p = 0.05 + 0.9 * u01(rng); break;
    case 6:
      row.top_k = u01(rng) < 0.5 ? small_k : large_k;
      row.top_p = 0.05 + 0.9 * u01(rng);
      break;
    default: row.top_p = 1.0; row.top_k = vocab; break;
  }
  return row;
}

SamplerRow ToSamplerRow(const SamplingReferenceRow& r) {
  return {r.temperature, r.top_p, r.top_k, r.uniform};
}

// log_softmax(x / T) at `token` in double, x / T rounded to FP32 (T = 1 when greedy).
double LogSoftmaxAt(const float* x, int64_t vocab, double temperature, int64_t token) {
  const float t = static_cast<float>(temperature) > 0.0f ? static_cast<float>(temperature) : 1.0f;
  double m = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) m = std::max(m, static_cast<double>(x[i] / t));
  double s = 0;
  for (int64_t i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(x[i] / t) - m);
  return static_cast<double>(x[token] / t) - m - std::log(s);
}

struct TorchCase {
  int64_t rows;
  int64_t vocab;
  double scale;    // std of the logits
  double quantum;  // > 0: logits rounded to its multiples (ties)
};

class ReferenceVsTorchSampler : public ::testing::TestWithParam<TorchCase> {};

// The torch sampler's probabilities are FP32 (errors ~1e-6) and the oracle's double:
// tokens are compared where no decision is within kMargin of flipping, logprobs everywhere.
TEST_P(ReferenceVsTorchSampler, SameTokensAndLogprobs) {
  const TorchCase c = GetParam();
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  constexpr double kMargin = 2e-5;
  std::vector<float> logits;
  std::vector<SamplingReferenceRow> rows;
  for (int64_t r = 0; r < c.rows; ++r) {
    auto x = RandomLogits(c.vocab, c.scale, c.quantum > 0 ? 0.0 : 1e-3, c.quantum, rng);
    logits.insert(logits.end(), x.begin(), x.end());
    rows.push_back(RandomRow(c.vocab, rng));
  }
  std::vector<SamplerRow> sampler_rows;
  for (const auto& r : rows) sampler_rows.push_back(ToSamplerRow(r));
  auto t = torch::from_blob(logits.data(), {c.rows, c.vocab}, torch::kFloat32).clone();
  const auto got = SampleTokens(t, sampler_rows);
  int64_t compared = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    SCOPED_TRACE("row " + std::to_string(r) + ": T " + std::to_string(rows[r].temperature) +
                 " top_p " + std::to_string(rows[r].top_p) + " top_k " +
                 std::to_string(rows[r].top_k) + " u " + std::to_string(rows[r].uniform));
    const float* x = logits.data() + r * c.vocab;
    const auto want = ReferenceSample(x, c.vocab, rows[r]);
    ASSERT_GE(got.tokens[r], 0);
    ASSERT_LT(got.tokens[r], c.vocab);
    // Every token the torch sampler returns is one the rule keeps.
    const auto dist = ReferenceSamplingDistribution(x, c.vocab, rows[r]);
    if (want.top_p_margin > kMargin) {
      EXPECT_GT(dist[got.tokens[r]], 0.0);
    }
    if (want.top_p_margin > kMargin && want.draw_margin > kMargin) {
      ++compared;
      EXPECT_EQ(got.tokens[r], want.token) << "margins " << want.top_p_margin << ", "
                                           << want.draw_margin;
    }
    // The logprob of the token the torch sampler chose, whichever it is.
    const double expected = LogSoftmaxAt(x, c.vocab, rows[r].temperature, got.tokens[r]);
    EXPECT_NEAR(got.logprobs[r], expected, 1e-5);
    if (got.tokens[r] == want.token) {
      EXPECT_NEAR(want.logprob, expected, 1e-9);
    }
  }
  EXPECT_GE(compared, c.rows / 2) << "too few rows clear of the margins";
}

INSTANTIATE_TEST_SUITE_P(Shapes, ReferenceVsTorchSampler,
                         ::testing::Values(TorchCase{64, 50, 2.0, 0.0},
                                           TorchCase{64, 1000, 2.0, 0.0},
                                           TorchCase{32, 5000, 3.0, 0.0},
                                           TorchCase{64, 1000, 0.3, 0.0},
                                           TorchCase{64, 1000, 2.0, 0.25},
                                           TorchCase{64, 40, 1.0, 0.5}),
                         [](const ::testing::TestParamInfo<TorchCase>& info) {
                           const auto& c = info.param;
                           return "r" + std::to_string(c.rows) + "_v" +
                                  std::to_string(c.vocab) + (c.quantum > 0 ? "_ties" : "") +
                                  (c.scale < 1 ? "_flat" : "");
                         });

// A row's sample does not depend on the filters of the rows that share its batch.
TEST(TorchSampler, ARowSamplesTheSameAloneAndInAMixedBatch) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int64_t R = 16, V = 300;
  std::vector<float> logits;
  std::vector<SamplerRow> rows;
  for (int64_t r = 0; r < R; ++r) {
    auto x = RandomLogits(V, 2.0, 1e-3, 0.0, rng);
    logits.insert(logits.end(), x.begin(), x.end());
    rows.push_back(ToSamplerRow(RandomRow(V, rng)));
  }
  auto t = torch::from_blob(logits.data(), {R, V}, torch::kFloat32).clone();
  const auto batch = SampleTokens(t, rows);
  for (int64_t r = 0; r < R; ++r) {
    const auto alone = SampleTokens(t.narrow(0, r, 1), {rows[r]});
    EXPECT_EQ(alone.tokens[0], batch.tokens[r]) << "row " << r;
    EXPECT_NEAR(alone.logprobs[0], batch.logprobs[r], 1e-6) << "row " << r;
  }
}

}  // namespace
}  // namespace lightrl
