// GPU tests of the fused sampling kernel against the double-precision reference: fresh
// random logits every run (the seed is printed on failure) at vocabularies up to
// MiniMax's, FP32 and bf16, strided rows with poisoned gaps, batches that mix greedy,
// temperature, top-k and top-p rows, equal logits, masked (-inf) tokens; the empirical
// distribution of many draws; and a CUDA-graph capture replayed on new inputs.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/cuda_check.h"
#include "kernels/sampling/sampling.h"
#include "kernels/sampling/sampling_reference.h"
#include "tests/kernels/cuda_test_util.h"

// GoogleTest's registration macros, seen through nvcc's front end, leave a never-read
// member (EDG 177) and a set-but-unused variable in the generated host code.
#pragma nv_diag_suppress 177
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"

namespace lightrl {
namespace {

// The kernel's running masses differ from the reference's by the FP32 exp (<= 2 ulp per
// token, so at most ~1.2e-7 of the mass) and the 2^-40 fixed point (~1e-10 in practice).
// Tokens are compared where the reference's decisions are farther than this from
// flipping, in probability (top-p) or in units of the uniform (the draw). At 200K tokens
// the draw's intervals are ~5e-6 wide, so a few percent of such rows sit closer.
constexpr double kMargin = 2e-7;

// Runs `f(r)` for r < n on the host's cores (the reference sorts every row).
template <typename F>
void ParallelFor(int n, F f) {
  const unsigned cores = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < cores; ++t) {
    pool.emplace_back([&] {
      for (int r = next++; r < n; r = next++) f(r);
    });
  }
  for (auto& t : pool) t.join();
}

// log_softmax(x / T)[token] in double, x / T rounded to FP32 (T = 1 when greedy).
double LogSoftmaxAt(const float* x, int vocab, float temperature, int64_t token) {
  const float t = temperature > 0.0f ? temperature : 1.0f;
  double m = -INFINITY;
  for (int i = 0; i < vocab; ++i) m = std::max(m, static_cast<double>(x[i] / t));
  double s = 0.0;
  for (int i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(x[i] / t) - m);
  return static_cast<double>(x[token] / t) - m - std::log(s);
}

SamplingRowOptions ToKernel(const SamplingReferenceRow& r) {
  SamplingRowOptions o;
  o.temperature = static_cast<float>(r.temperature);
  o.top_p = static_cast<float>(r.top_p);
  o.top_k = static_cast<float>(r.top_k);
  o.uniform = static_cast<float>(r.uniform);
  return o;
}

// Mixed options: greedy, plain temperature, top-k 1 / small / large / >= vocab, top-p
// tiny / moderate / 1, both; uniforms anywhere in [0, 1) including its ends.
SamplingReferenceRow RandomOptions(int vocab, std::mt19937& rng) {
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  SamplingReferenceRow row;
  row.temperature = 0.3 + 1.4 * u01(rng);
  const int64_t small_k = 2 + static_cast<int64_t>(u01(rng) * 48);
  const int64_t large_k = 1 + static_cast<int64_t>(u01(rng) * (vocab - 1));
  const double moderate_p = 0.05 + 0.9 * u01(rng);
  switch (std::uniform_int_distribution<int>(0, 10)(rng)) {
    case 0: row.temperature = 0.0; break;
    case 1: break;
    case 2: row.top_k = 1; break;
    case 3: row.top_k = small_k; break;
    case 4: row.top_k = large_k; break;
    case 5: row.top_k = 2 * int64_t{vocab}; break;  // >= vocab: off
    case 6: row.top_p = 1e-6; break;
    case 7: row.top_p = moderate_p; break;
    case 8: row.top_p = 1.0; row.top_k = vocab; break;  // both explicitly off
    case 9: row.top_k = small_k; row.top_p = moderate_p; break;
    default: row.top_k = large_k; row.top_p = moderate_p; break;
  }
  const int ends = std::uniform_int_distribution<int>(0, 19)(rng);
  row.uniform = ends == 0 ? 0.0 : ends == 1 ? 0.99999994 : u01(rng);
  return row;
}

// A batch of rows on the host, as the kernel will see it: logits rounded to bf16 when
// bf16, rows `stride` apart with the gap poisoned by huge logits that must never win.
struct Batch {
  int rows = 0;
  int vocab = 0;
  int64_t stride = 0;
  bool bf16 = false;
  std::vector<float> logits;  // [rows, stride], exactly the values the kernel reads
  std::vector<SamplingReferenceRow> options;

  const float* row(int r) const { return logits.data() + r * stride; }
};

// Row styles: peaked or flat, FP32 values or multiples of 1/8 (many equal logits), with
// or without masked (-inf) tokens.
Batch RandomBatch(int rows, int vocab, int64_t stride, bool bf16, std::mt19937& rng) {
  Batch b;
  b.rows = rows;
  b.vocab = vocab;
  b.stride = stride;
  b.bf16 = bf16;
  b.logits.assign(static_cast<size_t>(rows) * stride, 3.0e38f);
  const std::vector<double> scales = {0.5, 2.0, 4.0};
  for (int r = 0; r < rows; ++r) {
    std::mt19937 row_rng(rng());
    const double scale = scales[row_rng() % scales.size()];
    const bool ties = row_rng() % 4 == 0;
    const bool masked = row_rng() % 4 == 0;
    std::normal_distribution<float> normal(0.0f, static_cast<float>(scale));
    float* x = b.logits.data() + r * stride;
    for (int i = 0; i < vocab; ++i) {
      float v = normal(row_rng);
      if (ties) v = std::round(v * 8.0f) / 8.0f;
      if (masked && row_rng() % 64 == 0) v = -INFINITY;
      if (bf16) v = __bfloat162float(__float2bfloat16_rn(v));
      x[i] = v;
    }
    if (masked) x[row_rng() % vocab] = 0.0f;  // at least one finite logit
    b.options.push_back(RandomOptions(vocab, rng));
  }
  return b;
}

struct KernelOutput {
  std::vector<int64_t> tokens;
  std::vector<float> logprobs;
};

// The batch's inputs in device memory, the outputs poisoned.
class DeviceBatch {
 public:
  explicit DeviceBatch(const Batch& b)
      : f32_(b.bf16 ? 1 : b.logits.size()),
        bf16_(b.bf16 ? b.logits.size() : 1),
        options_(static_cast<size_t>(b.rows)),
        tokens_(static_cast<size_t>(b.rows)),
        logprobs_(static_cast<size_t>(b.rows)),
        rows_(b.rows) {
    Upload(b);
    params_.logits = b.bf16 ? static_cast<const void*>(bf16_.get()) : f32_.get();
    params_.logits_type = b.bf16 ? SamplingLogitsType::kBFloat16 : SamplingLogitsType::kFloat32;
    params_.logits_row_stride = b.stride;
    params_.options = options_.get();
    params_.tokens = tokens_.get();
    params_.logprobs = logprobs_.get();
    params_.rows = b.rows;
    params_.vocab = b.vocab;
  }

  // New logits and options of the same shape, in the same buffers.
  void Upload(const Batch& b) {
    if (b.bf16) {
      std::vector<__nv_bfloat16> bits(b.logits.size());
      for (size_t i = 0; i < bits.size(); ++i) bits[i] = __float2bfloat16_rn(b.logits[i]);
      bf16_.Upload(bits);
    } else {
      f32_.Upload(b.logits);
    }
    std::vector<SamplingRowOptions> options;
    for (const auto& o : b.options) options.push_back(ToKernel(o));
    options_.Upload(options);
    Poison();
  }

  // Token -1 and NaN logprobs, finished before anything else runs on any stream.
  void Poison() {
    CUDA_CHECK(cudaMemset(tokens_.get(), 0xff, rows_ * sizeof(int64_t)));
    CUDA_CHECK(cudaMemset(logprobs_.get(), 0xff, rows_ * sizeof(float)));
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  KernelOutput Download() const { return {tokens_.Download(), logprobs_.Download()}; }
  const FusedSamplingParams& params() const { return params_; }

 private:
  DeviceBuffer<float> f32_;
  DeviceBuffer<__nv_bfloat16> bf16_;
  DeviceBuffer<SamplingRowOptions> options_;
  DeviceBuffer<int64_t> tokens_;
  DeviceBuffer<float> logprobs_;
  size_t rows_;
  FusedSamplingParams params_;
};

KernelOutput RunKernel(DeviceBatch& d, cudaStream_t stream = nullptr) {
  d.Poison();
  EXPECT_EQ(d.params().Validate(), nullptr);
  CUDA_CHECK(LaunchFusedSampling(d.params(), stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return d.Download();
}

// Every row against the reference: the token wherever no decision is within kMargin of
// flipping (in a large batch, most rows), the logprob of the kernel's token always.
void ExpectMatchesReference(const Batch& b, const KernelOutput& out) {
  std::vector<SamplingReferenceResult> want(b.rows);
  std::vector<double> want_logprob(b.rows, NAN);
  ParallelFor(b.rows, [&](int r) {
    want[r] = ReferenceSample(b.row(r), b.vocab, b.options[r]);
    const int64_t t = out.tokens[r];
    if (t >= 0 && t < b.vocab) {
      want_logprob[r] = LogSoftmaxAt(b.row(r), b.vocab, static_cast<float>(b.options[r].temperature), t);
    }
  });
  int compared = 0;
  for (int r = 0; r < b.rows; ++r) {
    const auto& o = b.options[r];
    SCOPED_TRACE("row " + std::to_string(r) + ": T " + std::to_string(o.temperature) + " top_p " +
                 std::to_string(o.top_p) + " top_k " + std::to_string(o.top_k) + " u " +
                 std::to_string(o.uniform));
    ASSERT_GE(out.tokens[r], 0);
    ASSERT_LT(out.tokens[r], b.vocab);
    if (want[r].top_p_margin > kMargin && want[r].draw_margin > kMargin) {
      ++compared;
      EXPECT_EQ(out.tokens[r], want[r].token)
          << "margins " << want[r].top_p_margin << ", " << want[r].draw_margin << "; kept "
          << want[r].num_kept;
    }
    const double tol = 1e-5 * std::max(1.0, std::fabs(want_logprob[r]));
    EXPECT_NEAR(out.logprobs[r], want_logprob[r], tol) << "token " << out.tokens[r];
    if (out.tokens[r] == want[r].token) {
      EXPECT_NEAR(out.logprobs[r], want[r].logprob, tol);
    }
  }
  if (b.rows >= 16) {
    EXPECT_GE(compared, b.rows / 2) << "too few rows clear of the margins";
  }
}

struct SampleCase {
  int rows;
  int vocab;
  int pad;  // extra logits per row (odd: the element-wise path)
  bool bf16;
};

std::string CaseName(const SampleCase& c) {
  return std::string(c.bf16 ? "bf16" : "fp32") + "_r" + std::to_string(c.rows) + "_v" +
         std::to_string(c.vocab) + "_pad" + std::to_string(c.pad);
}

void PrintTo(const SampleCase& c, std::ostream* os) { *os << CaseName(c); }

class FusedSamplingTest : public ::testing::TestWithParam<SampleCase> {};

TEST_P(FusedSamplingTest, MatchesReference) {
  const SampleCase& c = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const Batch b = RandomBatch(c.rows, c.vocab, c.vocab + c.pad, c.bf16, rng);
  DeviceBatch d(b);
  ExpectMatchesReference(b, RunKernel(d));
}

std::vector<SampleCase> Cases() {
  std::vector<SampleCase> cases;
  for (bool bf16 : {false, true}) {
    for (int vocab : {1000, 32000, 200064}) {
      for (int rows : {1, 7, 64, 257}) {
        // Odd padding on the smallest vocabulary: unaligned rows, the element-wise path.
        const int pad = vocab == 1000 ? (rows % 2 ? 3 : 0) : (rows == 7 ? 8 : 0);
        cases.push_back({rows, vocab, pad, bf16});
      }
    }
  }
  cases.push_back({5, 1, 0, false});  // a single token
  cases.push_back({9, 37, 1, true});  // a vocabulary that is not a whole number of chunks
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, FusedSamplingTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<SampleCase>& info) {
                           return CaseName(info.param);
                         });

// Equal logits everywhere: every decision falls among ties and resolves by id. Also -0
// against +0 as the maximum.
TEST(FusedSampling, EqualLogitsResolveByAscendingId) {
  const int vocab = 1000, rows = 64;
  Batch b;
  b.rows = rows;
  b.vocab = vocab;
  b.stride = vocab;
  b.logits.assign(static_cast<size_t>(rows) * vocab, 0.25f);
  for (int r = 0; r < rows; ++r) {
    SamplingReferenceRow o;
    o.temperature = 0.7;
    o.uniform = (r + 0.5) / rows;
    if (r % 3 == 0) o.top_k = 300;
    if (r % 3 == 1) o.top_p = 0.3337;  // 334 of 1000 equal tokens
    if (r % 8 == 7) {
      o.temperature = 0.0;  // greedy over -0 at id 3 and +0 at id 5
      float* x = b.logits.data() + static_cast<size_t>(r) * vocab;
      std::fill(x, x + vocab, -1.0f);
      x[3] = -0.0f;
      x[5] = 0.0f;
    }
    b.options.push_back(o);
  }
  DeviceBatch d(b);
  const auto out = RunKernel(d);
  ExpectMatchesReference(b, out);
  for (int r = 7; r < rows; r += 8) EXPECT_EQ(out.tokens[r], 3) << "row " << r;
  // Uniforms (r + 0.5) / 64 over 300 equal kept tokens: id floor(300 u).
  for (int r = 0; r < rows; r += 3) {
    if (r % 8 == 7) continue;
    EXPECT_EQ(out.tokens[r], static_cast<int64_t>(300 * (r + 0.5) / rows)) << "row " << r;
  }
}

// Many draws from one row: the frequencies are the truncated, renormalised distribution,
// and no dropped token is ever drawn.
TEST(FusedSampling, DrawFrequenciesMatchTheKeptDistribution) {
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int vocab = 64, draws = 1 << 17;
  struct Config {
    double temperature, top_p;
    int64_t top_k;
    bool bf16;
  };
  for (const Config& cfg : {Config{0.8, 1.0, 10, false}, Config{1.2, 0.7, 0, false},
                            Config{1.0, 0.9, 20, true}, Config{1.0, 1.0, 0, true},
                            Config{0.5, 0.95, 0, false}}) {
    SCOPED_TRACE("T " + std::to_string(cfg.temperature) + " top_p " + std::to_string(cfg.top_p) +
                 " top_k " + std::to_string(cfg.top_k) + (cfg.bf16 ? " bf16" : " fp32"));
    SamplingReferenceRow options;
    options.temperature = cfg.temperature;
    options.top_p = cfg.top_p;
    options.top_k = cfg.top_k;
    // Logits whose top-p boundary is clear, so that the kept set is not in doubt, and that
    // keep more than one token (a low temperature can leave one token above top_p alone).
    std::normal_distribution<float> normal(0.0f, 1.5f);
    std::vector<float> x(vocab);
    auto kept_tokens = [&] {
      const auto p = ReferenceSamplingDistribution(x.data(), vocab, options);
      return std::count_if(p.begin(), p.end(), [](double q) { return q > 0.0; });
    };
    do {
      for (float& v : x) v = normal(rng);
      if (cfg.bf16) {
        for (float& v : x) v = __bfloat162float(__float2bfloat16_rn(v));
      }
    } while (ReferenceSample(x.data(), vocab, options).top_p_margin < 1e-3 || kept_tokens() < 2);
    Batch b;
    b.rows = draws;
    b.vocab = vocab;
    b.stride = vocab;
    b.bf16 = cfg.bf16;
    std::uniform_real_distribution<double> u01(0.0, 1.0);
    for (int r = 0; r < draws; ++r) {
      b.logits.insert(b.logits.end(), x.begin(), x.end());
      options.uniform = u01(rng);
      b.options.push_back(options);
    }
    DeviceBatch d(b);
    const auto out = RunKernel(d);
    const auto dist = ReferenceSamplingDistribution(x.data(), vocab, b.options[0]);
    std::vector<int64_t> counts(vocab, 0);
    for (int64_t t : out.tokens) {
      ASSERT_GE(t, 0);
      ASSERT_LT(t, vocab);
      ++counts[t];
    }
    int kept = 0;
    for (int i = 0; i < vocab; ++i) {
      if (dist[i] == 0.0) {
        EXPECT_EQ(counts[i], 0) << "dropped token " << i << " drawn";
        continue;
      }
      ++kept;
      // Six binomial standard deviations: a false alarm is ~1e-9 per token.
      const double mean = draws * dist[i];
      const double sd = std::sqrt(draws * dist[i] * (1.0 - dist[i]));
      EXPECT_NEAR(static_cast<double>(counts[i]), mean, 6.0 * sd + 1.0) << "token " << i;
    }
    EXPECT_GT(kept, 1);
    // Where no margin is thin, each draw is the reference's.
    ExpectMatchesReference(b, out);
  }
}

// A captured launch replays what the eager launch computes, bit for bit, and follows
// new logits and options written into the same buffers.
TEST(FusedSampling, GraphReplayEqualsEagerLaunch) {
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    Batch b = RandomBatch(64, 32000, 32000, bf16, rng);
    DeviceBatch d(b);
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph;
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    CUDA_CHECK(LaunchFusedSampling(d.params(), stream));
    CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int round = 0; round < 2; ++round) {
      if (round == 1) {
        b = RandomBatch(64, 32000, 32000, bf16, rng);
        d.Upload(b);
      }
      const auto eager = RunKernel(d, stream);
      d.Poison();
      CUDA_CHECK(cudaGraphLaunch(exec, stream));
      CUDA_CHECK(cudaStreamSynchronize(stream));
      const auto replay = d.Download();
      for (int r = 0; r < b.rows; ++r) {
        EXPECT_EQ(replay.tokens[r], eager.tokens[r]) << "round " << round << " row " << r;
        EXPECT_EQ(std::memcmp(&replay.logprobs[r], &eager.logprobs[r], sizeof(float)), 0)
            << "round " << round << " row " << r << ": " << replay.logprobs[r] << " vs "
            << eager.logprobs[r];
      }
      ExpectMatchesReference(b, replay);
    }
    CUDA_CHECK(cudaGraphExecDestroy(exec));
    CUDA_CHECK(cudaGraphDestroy(graph));
    CUDA_CHECK(cudaStreamDestroy(stream));
  }
}

TEST(FusedSamplingValidate, RejectsBadParameters) {
  DeviceBuffer<float> logits(64);
  DeviceBuffer<SamplingRowOptions> options(1);
  DeviceBuffer<int64_t> tokens(1);
  DeviceBuffer<float> logprobs(1);
  FusedSamplingParams p;
  p.logits = logits.get();
  p.logits_row_stride = 64;
  p.options = options.get();
  p.tokens = tokens.get();
  p.logprobs = logprobs.get();
  p.rows = 1;
  p.vocab = 64;
  EXPECT_EQ(p.Validate(), nullptr);
  FusedSamplingParams bad = p;
  bad.vocab = 0;
  EXPECT_NE(bad.Validate(), nullptr);
  EXPECT_EQ(LaunchFusedSampling(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.vocab = kSamplingMaxVocab + 1;
  bad.logits_row_stride = bad.vocab;
  EXPECT_NE(bad.Validate(), nullptr);
  bad = p;
  bad.logits_row_stride = 63;
  EXPECT_NE(bad.Validate(), nullptr);
  bad = p;
  bad.options = nullptr;
  EXPECT_NE(bad.Validate(), nullptr);
  bad = p;
  bad.rows = -1;
  EXPECT_NE(bad.Validate(), nullptr);
  // No rows: nothing to launch.
  FusedSamplingParams empty = p;
  empty.rows = 0;
  EXPECT_EQ(LaunchFusedSampling(empty, nullptr), cudaSuccess);
  CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace lightrl
