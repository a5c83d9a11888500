// GPU tests of the lightning prefill, decode and training kernels against the double
// precision reference in kernels/lightning/. Fresh random inputs every run (the
// seed is printed on failure), poisoned outputs, ragged varlen batches.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "kernels/cuda_check.h"
#include "kernels/lightning/lightning_decode.h"
#include "kernels/lightning/lightning_prefill.h"
#include "kernels/lightning/lightning_train.h"
#include "kernels/lightning/lightning_reference.h"
#include "tests/kernels/cuda_test_util.h"

// GoogleTest's registration macros, seen through nvcc's front end, leave a never-read
// member (EDG 177) and a set-but-unused variable in the generated host code.
#pragma nv_diag_suppress 177
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"

namespace lightrl {
namespace {


// Slopes drawn from real MiniMax layers of an 80-layer, 64-head model: from fast decay
// (lambda ~ 0.4) to almost none (the last layer).
std::vector<float> RandomSlopes(int num_heads, std::mt19937& rng) {
  std::vector<float> slopes(num_heads);
  std::uniform_int_distribution<int> layer(0, 79);
  std::uniform_int_distribution<int> head(0, 63);
  for (float& s : slopes) s = MiniMaxSlopes(64, layer(rng), 80)[head(rng)];
  return slopes;
}

// bf16 values on a [tokens][heads][d] grid at a given stride; `values` receives the
// exact floats in contiguous [tokens][heads][d] order for the reference.
void FillStrided(std::vector<__nv_bfloat16>& buf, int64_t offset, int64_t token_stride,
                 int64_t head_stride, int64_t num_tokens, int num_heads, int d, float scale,
                 std::mt19937& rng, std::vector<float>* values) {
  std::normal_distribution<float> normal(0.0f, scale);
  values->resize(static_cast<size_t>(num_tokens) * num_heads * d);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int h = 0; h < num_heads; ++h) {
      for (int i = 0; i < d; ++i) {
        const __nv_bfloat16 x = __float2bfloat16_rn(normal(rng));
        buf[offset + t * token_stride + h * head_stride + i] = x;
        (*values)[(t * num_heads + h) * d + i] = ToFloat(x);
      }
    }
  }
}

struct PrefillCase {
  std::vector<int32_t> lengths;
  int num_heads;
  int head_dim;
  int block_size;  // 0 auto
  int dv_split;    // 0 auto
  bool reverse;
  bool use_initial_state;
  bool fused_qkv;  // q, k, v read from one [T][H][3][d] buffer
  bool exact_state = true;
  bool warpgroup = true;  // the sm_90a kernel where it serves (d 128, 64-token blocks)
  int warp_specialized = 0;  // LightningPrefillParams::warp_specialized (these small
                             // batches take the warp-specialised form by themselves)
};

std::string CaseName(const PrefillCase& c) {
  std::string name = "d" + std::to_string(c.head_dim) + "_h" + std::to_string(c.num_heads) +
                     "_b" + std::to_string(c.block_size) + "_dv" + std::to_string(c.dv_split);
  name += c.reverse ? "_rev" : "_fwd";
  name += c.use_initial_state ? "_s0" : "_zero";
  name += c.fused_qkv ? "_fused" : "_split";
  name += c.exact_state ? "" : "_fast";
  name += c.warpgroup ? "" : "_mma";
  name += c.warp_specialized == 1 ? "_onewg" : c.warp_specialized == 2 ? "_ws" : "";
  name += "_n" + std::to_string(c.lengths.size());
  return name;
}

void PrintTo(const PrefillCase& c, std::ostream* os) { *os << CaseName(c); }

// Everything one prefill needs, on host and device, with a padded (poisoned) output.
struct PrefillFixture {
  LightningReferenceProblem problem;
  std::vector<float> q, k, v;      // exact input values, [T][H][d]
  std::vector<int32_t> slots;      // slot of each sequence
  int num_slots = 0;
  std::vector<float> state_init;   // whole pool before the call
  int64_t o_token_stride = 0, o_head_stride = 0;
  std::vector<__nv_bfloat16> qkv_host;
  LightningPrefillParams params;
  DeviceBuffer<__nv_bfloat16>* d_qkv = nullptr;
  DeviceBuffer<__nv_bfloat16>* d_o = nullptr;
  DeviceBuffer<float>* d_state = nullptr;
  DeviceBuffer<int32_t>* d_cu = nullptr;
  DeviceBuffer<int32_t>* d_slots = nullptr;
  DeviceBuffer<float>* d_slopes = nullptr;

  PrefillFixture(const PrefillCase& c, std::mt19937& rng) {
    const int H = c.num_heads;
    const int d = c.head_dim;
    problem.num_heads = H;
    problem.head_dim = d;
    problem.reverse = c.reverse;
    problem.cu_seqlens = {0};
    for (int32_t len : c.lengths) problem.cu_seqlens.push_back(problem.cu_seqlens.back() + len);
    problem.slopes = RandomSlopes(H, rng);
    const int64_t T = problem.num_tokens();
    const int num_seqs = problem.num_seqs();

    // Inputs: fused [T][H][3][d] or three [T][H][d] blocks of one allocation.
    const int64_t qkv_elems = T * H * 3 * d;
    qkv_host.assign(std::max<int64_t>(qkv_elems, 8), FromBits(kPoisonBits));
    LightningInputView views[3];
    int64_t offsets[3];
    std::vector<float>* values[3] = {&q, &k, &v};
    for (int which = 0; which < 3; ++which) {
      offsets[which] = c.fused_qkv ? which * d : which * T * H * d;
      views[which].token_stride = c.fused_qkv ? int64_t{3} * H * d : int64_t{H} * d;
      views[which].head_stride = c.fused_qkv ? 3 * d : d;
      FillStrided(qkv_host, offsets[which], views[which].token_stride, views[which].head_stride,
                  T, H, d, 0.5f, rng, values[which]);
    }
    d_qkv = new DeviceBuffer<__nv_bfloat16>(qkv_host);
    for (int which = 0; which < 3; ++which) views[which].data = d_qkv->get() + offsets[which];

    // Output with 8 padding elements after each head row, all poisoned.
    o_head_stride = d + 8;
    o_token_stride = int64_t{H} * o_head_stride;
    d_o = new DeviceBuffer<__nv_bfloat16>(
        std::vector<__nv_bfloat16>(std::max<int64_t>(T * o_token_stride, 8), FromBits(kPoisonBits)));

    // State pool with two spare slots; sequences take a random permutation of slots.
    num_slots = num_seqs + 2;
    slots.resize(num_slots);
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    slots.resize(num_seqs);
    std::normal_distribution<float> normal(0.0f, 0.5f);
    state_init.resize(static_cast<size_t>(num_slots) * problem.state_elems());
    for (float& x : state_init) x = normal(rng);
    d_state = new DeviceBuffer<float>(state_init);
    d_cu = new DeviceBuffer<int32_t>(problem.cu_seqlens);
    d_slots = new DeviceBuffer<int32_t>(slots);
    d_slopes = new DeviceBuffer<float>(problem.slopes);

    params.q = views[0];
    params.k = views[1];
    params.v = views[2];
    params.o = {d_o->get(), o_token_stride, o_head_stride};
    params.cu_seqlens = d_cu->get();
    params.state_slots = d_slots->get();
    params.state = d_state->get();
    params.slopes = d_slopes->get();
    params.num_seqs = num_seqs;
    params.num_heads = H;
    params.head_dim = d;
    params.max_seqlen = c.lengths.empty() ? 0 : *std::max_element(c.lengths.begin(), c.lengths.end());
    params.num_tokens = T;
    params.use_initial_state = c.use_initial_state;
    params.store_final_state = true;
    params.reverse = c.reverse;
    params.block_size = c.block_size;
    params.dv_split = c.dv_split;
    params.exact_state = c.exact_state;
    params.warpgroup = c.warpgroup;
    params.warp_specialized = c.warp_specialized;
  }
  ~PrefillFixture() {
    delete d_qkv;
    delete d_o;
    delete d_state;
    delete d_cu;
    delete d_slots;
    delete d_slopes;
  }

  // Initial states in sequence order, as the reference wants them.
  std::vector<double> InitialStatesBySequence() const {
    const int64_t e = problem.state_elems();
    std::vector<double> out(static_cast<size_t>(problem.num_seqs()) * e);
    for (int n = 0; n < problem.num_seqs(); ++n) {
      for (int64_t i = 0; i < e; ++i) out[n * e + i] = state_init[slots[n] * e + i];
    }
    return out;
  }
};

class PrefillTest : public ::testing::TestWithParam<PrefillCase> {};

TEST_P(PrefillTest, MatchesRecurrence) {
  const PrefillCase& c = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  PrefillFixture f(c, rng);
  ASSERT_EQ(f.params.Validate(), nullptr);
  CUDA_CHECK(LaunchLightningPrefill(f.params, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());

  const LightningReferenceProblem& p = f.problem;
  const int H = p.num_heads;
  const int d = p.head_dim;
  const int64_t T = p.num_tokens();
  const std::vector<double> s0 = f.InitialStatesBySequence();
  std::vector<double> ref_out(static_cast<size_t>(T) * H * d, NAN);
  std::vector<double> ref_state(s0.size(), NAN);
  ReferenceLightningRecurrence(p, f.q.data(), f.k.data(), f.v.data(),
                               c.use_initial_state ? s0.data() : nullptr, ref_out.data(),
                               ref_state.data());

  const std::vector<__nv_bfloat16> o = f.d_o->Download();
  const std::vector<float> state = f.d_state->Download();
  const int64_t e = p.state_elems();
  // The exact state path is FP32-accurate; the fast one rounds each decayed key to bf16.
  const double state_tol = c.exact_state ? 1e-5 : 5e-3;
  double worst_out = 0.0;
  double worst_state = 0.0;
  for (int n = 0; n < p.num_seqs(); ++n) {
    const int64_t begin = p.cu_seqlens[n];
    const int64_t end = p.cu_seqlens[n + 1];
    // Output of this sequence, and its padding left poisoned.
    std::vector<double> got, want;
    for (int64_t t = begin; t < end; ++t) {
      for (int h = 0; h < H; ++h) {
        for (int i = 0; i < d + 8; ++i) {
          const __nv_bfloat16 x = o[t * f.o_token_stride + h * f.o_head_stride + i];
          if (i < d) {
            got.push_back(ToFloat(x));
            want.push_back(ref_out[(t * H + h) * d + i]);
          } else {
            ASSERT_EQ(Bits(x), kPoisonBits) << "padding written at token " << t;
          }
        }
      }
    }
    if (end > begin) {
      const double err = RelErr(got, want);
      worst_out = std::max(worst_out, err);
      EXPECT_LE(err, 1e-2) << "output of sequence " << n << " (len " << end - begin << ")";
    }
    std::vector<double> got_state(state.begin() + f.slots[n] * e,
                                  state.begin() + (f.slots[n] + 1) * e);
    std::vector<double> want_state(ref_state.begin() + n * e, ref_state.begin() + (n + 1) * e);
    const double state_err = RelErr(got_state, want_state);
    worst_state = std::max(worst_state, state_err);
    EXPECT_LE(state_err, state_tol) << "final state of sequence " << n << " (len "
                                    << end - begin << ")";
  }
  std::printf("  worst relative error: output %.2e, final state %.2e\n", worst_out, worst_state);
  // Slots no sequence names are untouched.
  for (int s = 0; s < f.num_slots; ++s) {
    if (std::find(f.slots.begin(), f.slots.end(), s) != f.slots.end()) continue;
    for (int64_t i = 0; i < e; ++i) {
      ASSERT_EQ(state[s * e + i], f.state_init[s * e + i]) << "spare slot " << s << " written";
    }
  }
}

std::vector<PrefillCase> PrefillCases() {
  const std::vector<int32_t> ragged = {1, 31, 32, 33, 0, 64, 65, 200, 127, 517};
  std::vector<PrefillCase> cases;
  for (int d : {64, 128}) {
    for (int dv : {0, 32, 64}) {
      for (int block : {0, 32, 64}) {
        for (bool reverse : {false, true}) {
          const bool s0 = (cases.size() / 2) % 2 == 0;  // all four (reverse, s0) pairs
          cases.push_back({ragged, 3, d, block, dv, reverse, s0, /*fused=*/block != 32});
        }
      }
    }
    // Short batches pick the 32-token block by themselves; one long sequence; one token.
    cases.push_back({{5, 17, 32, 3}, 2, d, 0, 0, false, true, true});
    cases.push_back({{2000}, 2, d, 0, 0, false, false, true});
    cases.push_back({{2000}, 2, d, 0, 0, true, true, false});
    cases.push_back({{1}, 4, d, 0, 0, false, true, true});
    // The fast state path (one bf16 product per term).
    cases.push_back({ragged, 3, d, 0, 0, false, true, true, /*exact_state=*/false});
    cases.push_back({{2000}, 2, d, 64, 32, true, false, false, /*exact_state=*/false});
  }
  // The mma.sync kernel at the shapes the warpgroup kernel takes on sm_90a.
  for (int dv : {32, 64}) {
    for (bool reverse : {false, true}) {
      cases.push_back({ragged, 3, 128, 64, dv, reverse, !reverse, true, true, /*warpgroup=*/false});
    }
  }
  cases.push_back({{2000}, 2, 128, 0, 0, false, true, false, false, /*warpgroup=*/false});
  // The warpgroup kernel on more value slices and long ragged batches.
  cases.push_back({{4099, 64, 63, 1, 700}, 5, 128, 0, 64, false, true, true});
  cases.push_back({{4099, 64, 63, 1, 700}, 5, 128, 0, 32, true, false, false});
  cases.push_back({{4099, 64, 63, 1, 700}, 5, 128, 0, 64, true, true, true, /*exact_state=*/false});
  // The one-warpgroup sm_90a form (what large batches take) at the same shapes.
  for (int dv : {32, 64}) {
    for (bool reverse : {false, true}) {
      cases.push_back({ragged, 3, 128, 64, dv, reverse, reverse, true, true, true,
                       /*warp_specialized=*/1});
    }
  }
  cases.push_back({{4099, 64, 63, 1, 700}, 5, 128, 0, 64, false, true, false, true, true,
                   /*warp_specialized=*/1});
  cases.push_back({{4099, 64, 63, 1, 700}, 5, 128, 0, 32, true, false, true, false, true,
                   /*warp_specialized=*/1});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Shapes, PrefillTest, ::testing::ValuesIn(PrefillCases()),
                         [](const ::testing::TestParamInfo<PrefillCase>& info) {
                           return CaseName(info.param) + "_" + std::to_string(info.index);
                         });

class DecodeTest : public ::testing::TestWithParam<int> {};

TEST_P(DecodeTest, MatchesRecurrenceStep) {
  const int d = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int H = 5;
  const int batch = 7;
  const int num_slots = 10;
  LightningReferenceProblem p;
  p.num_heads = H;
  p.head_dim = d;
  for (int b = 0; b <= batch; ++b) p.cu_seqlens.push_back(b);
  p.slopes = RandomSlopes(H, rng);

  // Strided inputs: the fused [B][H][3][d] layout.
  std::vector<__nv_bfloat16> qkv(static_cast<size_t>(batch) * H * 3 * d);
  std::vector<float> q, k, v;
  FillStrided(qkv, 0, 3 * H * d, 3 * d, batch, H, d, 0.5f, rng, &q);
  FillStrided(qkv, d, 3 * H * d, 3 * d, batch, H, d, 0.5f, rng, &k);
  FillStrided(qkv, 2 * d, 3 * H * d, 3 * d, batch, H, d, 0.5f, rng, &v);
  std::vector<int32_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(batch);
  slots[3] = -1;  // a padded entry: skipped
  std::normal_distribution<float> normal(0.0f, 0.5f);
  std::vector<float> pool(static_cast<size_t>(num_slots) * p.state_elems());
  for (float& x : pool) x = normal(rng);

  DeviceBuffer<__nv_bfloat16> d_qkv(qkv);
  DeviceBuffer<__nv_bfloat16> d_o(std::vector<__nv_bfloat16>(
      static_cast<size_t>(batch) * H * d, FromBits(kPoisonBits)));
  DeviceBuffer<float> d_pool(pool);
  DeviceBuffer<int32_t> d_slots(slots);
  DeviceBuffer<float> d_slopes(p.slopes);
  LightningDecodeParams params;
  params.q = {d_qkv.get(), 3 * H * d, 3 * d};
  params.k = {d_qkv.get() + d, 3 * H * d, 3 * d};
  params.v = {d_qkv.get() + 2 * d, 3 * H * d, 3 * d};
  params.o = {d_o.get(), int64_t{H} * d, d};
  params.state_slots = d_slots.get();
  params.state = d_pool.get();
  params.slopes = d_slopes.get();
  params.batch = batch;
  params.num_heads = H;
  params.head_dim = d;
  ASSERT_EQ(params.Validate(), nullptr);
  CUDA_CHECK(LaunchLightningDecode(params, nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());

  const int64_t e = p.state_elems();
  std::vector<double> s0(static_cast<size_t>(batch) * e, 0.0);
  for (int b = 0; b < batch; ++b) {
    if (slots[b] < 0) continue;
    for (int64_t i = 0; i < e; ++i) s0[b * e + i] = pool[slots[b] * e + i];
  }
  std::vector<double> ref_out(static_cast<size_t>(batch) * H * d);
  std::vector<double> ref_state(s0.size());
  ReferenceLightningRecurrence(p, q.data(), k.data(), v.data(), s0.data(), ref_out.data(),
                               ref_state.data());
  const std::vector<__nv_bfloat16> o = d_o.Download();
  const std::vector<float> pool_after = d_pool.Download();
  double worst_out = 0.0;
  double worst_state = 0.0;
  for (int b = 0; b < batch; ++b) {
    if (slots[b] < 0) {
      for (int64_t i = 0; i < int64_t{H} * d; ++i) {
        ASSERT_EQ(Bits(o[b * H * d + i]), kPoisonBits) << "skipped entry's output written";
      }
      continue;
    }
    std::vector<double> got(static_cast<size_t>(H) * d);
    for (size_t i = 0; i < got.size(); ++i) got[i] = ToFloat(o[b * H * d + i]);
    std::vector<double> want(ref_out.begin() + b * H * d, ref_out.begin() + (b + 1) * H * d);
    const double out_err = RelErr(got, want);
    EXPECT_LE(out_err, 1e-2) << "output of entry " << b;
    std::vector<double> got_state(pool_after.begin() + slots[b] * e,
                                  pool_after.begin() + (slots[b] + 1) * e);
    std::vector<double> want_state(ref_state.begin() + b * e, ref_state.begin() + (b + 1) * e);
    const double state_err = RelErr(got_state, want_state);
    EXPECT_LE(state_err, 1e-5) << "state of entry " << b;
    worst_out = std::max(worst_out, out_err);
    worst_state = std::max(worst_state, state_err);
  }
  std::printf("  worst relative error: output %.2e, state %.2e\n", worst_out, worst_state);
  // Slots of skipped entries and unused slots keep their bits.
  for (int s = 0; s < num_slots; ++s) {
    if (std::find(slots.begin(), slots.end(), s) != slots.end()) continue;
    for (int64_t i = 0; i < e; ++i) ASSERT_EQ(pool_after[s * e + i], pool[s * e + i]);
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, DecodeTest, ::testing::Values(64, 128));

// Prefill of each prompt in two calls (the second continuing from the first state), then
// token-by-token decode of the rest,
// equals one prefill over the whole sequences: the serving path agrees with itself.
class DecodeAfterPrefillTest : public ::testing::TestWithParam<int> {};

TEST_P(DecodeAfterPrefillTest, EqualsOneLongPrefill) {
  const int d = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int H = 4;
  const std::vector<int32_t> prompt = {70, 1, 129, 33};
  const int steps = 6;
  const int num_seqs = static_cast<int>(prompt.size());
  LightningReferenceProblem full;
  full.num_heads = H;
  full.head_dim = d;
  full.cu_seqlens = {0};
  for (int32_t len : prompt) full.cu_seqlens.push_back(full.cu_seqlens.back() + len + steps);
  full.slopes = RandomSlopes(H, rng);
  const int64_t T = full.num_tokens();
  std::vector<__nv_bfloat16> qkv(static_cast<size_t>(T) * H * 3 * d);
  std::vector<float> q, k, v;
  FillStrided(qkv, 0, 3 * H * d, 3 * d, T, H, d, 0.5f, rng, &q);
  FillStrided(qkv, d, 3 * H * d, 3 * d, T, H, d, 0.5f, rng, &k);
  FillStrided(qkv, 2 * d, 3 * H * d, 3 * d, T, H, d, 0.5f, rng, &v);
  DeviceBuffer<__nv_bfloat16> d_qkv(qkv);
  DeviceBuffer<float> d_slopes(full.slopes);
  const int64_t e = full.state_elems();
  const LightningInputView qv{d_qkv.get(), 3 * H * d, 3 * d};
  const LightningInputView kv{d_qkv.get() + d, 3 * H * d, 3 * d};
  const LightningInputView vv{d_qkv.get() + 2 * d, 3 * H * d, 3 * d};

  // One long prefill.
  DeviceBuffer<__nv_bfloat16> d_o_full(std::vector<__nv_bfloat16>(
      static_cast<size_t>(T) * H * d, FromBits(kPoisonBits)));
  DeviceBuffer<float> d_state_full(static_cast<size_t>(num_seqs) * e);
  DeviceBuffer<int32_t> d_cu_full(full.cu_seqlens);
  LightningPrefillParams pf;
  pf.q = qv;
  pf.k = kv;
  pf.v = vv;
  pf.o = {d_o_full.get(), int64_t{H} * d, d};
  pf.cu_seqlens = d_cu_full.get();
  pf.state = d_state_full.get();
  pf.slopes = d_slopes.get();
  pf.num_seqs = num_seqs;
  pf.num_heads = H;
  pf.head_dim = d;
  pf.max_seqlen = 129 + steps;
  pf.num_tokens = T;
  CUDA_CHECK(LaunchLightningPrefill(pf, nullptr));

  // The prompts in two prefill calls, the second continuing from the first's state
  // (chunked prefill), one sequence per call since a call's sequences are contiguous.
  std::vector<int32_t> slots(num_seqs);
  for (int n = 0; n < num_seqs; ++n) slots[n] = num_seqs - 1 - n;
  DeviceBuffer<float> d_pool(static_cast<size_t>(num_seqs) * e);
  DeviceBuffer<__nv_bfloat16> d_o_inc(std::vector<__nv_bfloat16>(
      static_cast<size_t>(T) * H * d, FromBits(kPoisonBits)));
  for (int n = 0; n < num_seqs; ++n) {
    const int32_t begin = full.cu_seqlens[n];
    const int32_t split = begin + prompt[n] / 2;
    for (int part = 0; part < 2; ++part) {
      const std::vector<int32_t> cu = part == 0 ? std::vector<int32_t>{begin, split}
                                                : std::vector<int32_t>{split, begin + prompt[n]};
      DeviceBuffer<int32_t> d_cu(cu);
      DeviceBuffer<int32_t> d_slot(std::vector<int32_t>{slots[n]});
      LightningPrefillParams pp = pf;
      pp.o = {d_o_inc.get(), int64_t{H} * d, d};
      pp.cu_seqlens = d_cu.get();
      pp.state_slots = d_slot.get();
      pp.state = d_pool.get();
      pp.num_seqs = 1;
      pp.max_seqlen = cu[1] - cu[0];
      pp.use_initial_state = part == 1;
      CUDA_CHECK(LaunchLightningPrefill(pp, nullptr));
      CUDA_CHECK(cudaDeviceSynchronize());
    }
  }
  // Decode steps: token prompt[n] + s of every sequence, as a batch.
  DeviceBuffer<int32_t> d_slots(slots);
  for (int s = 0; s < steps; ++s) {
    // Entry n of the batch is token full.cu_seqlens[n] + prompt[n] + s: express the
    // batch as views with a per-entry stride by copying the rows into a compact buffer.
    std::vector<__nv_bfloat16> step_qkv(static_cast<size_t>(num_seqs) * H * 3 * d);
    for (int n = 0; n < num_seqs; ++n) {
      const int64_t t = full.cu_seqlens[n] + prompt[n] + s;
      std::copy(qkv.begin() + t * H * 3 * d, qkv.begin() + (t + 1) * H * 3 * d,
                step_qkv.begin() + int64_t{n} * H * 3 * d);
    }
    DeviceBuffer<__nv_bfloat16> d_step(step_qkv);
    DeviceBuffer<__nv_bfloat16> d_step_o(std::vector<__nv_bfloat16>(
        static_cast<size_t>(num_seqs) * H * d, FromBits(kPoisonBits)));
    LightningDecodeParams dp;
    dp.q = {d_step.get(), 3 * H * d, 3 * d};
    dp.k = {d_step.get() + d, 3 * H * d, 3 * d};
    dp.v = {d_step.get() + 2 * d, 3 * H * d, 3 * d};
    dp.o = {d_step_o.get(), int64_t{H} * d, d};
    dp.state_slots = d_slots.get();
    dp.state = d_pool.get();
    dp.slopes = d_slopes.get();
    dp.batch = num_seqs;
    dp.num_heads = H;
    dp.head_dim = d;
    CUDA_CHECK(LaunchLightningDecode(dp, nullptr));
    const std::vector<__nv_bfloat16> step_o = d_step_o.Download();
    for (int n = 0; n < num_seqs; ++n) {
      const int64_t t = full.cu_seqlens[n] + prompt[n] + s;
      CUDA_CHECK(cudaMemcpy(d_o_inc.get() + t * H * d, step_o.data() + int64_t{n} * H * d,
                            sizeof(__nv_bfloat16) * H * d, cudaMemcpyHostToDevice));
    }
  }
  CUDA_CHECK(cudaDeviceSynchronize());

  std::vector<double> ref_out(static_cast<size_t>(T) * H * d);
  std::vector<double> ref_state(static_cast<size_t>(num_seqs) * e);
  ReferenceLightningRecurrence(full, q.data(), k.data(), v.data(), nullptr, ref_out.data(),
                               ref_state.data());
  const std::vector<__nv_bfloat16> o_full = d_o_full.Download();
  const std::vector<__nv_bfloat16> o_inc = d_o_inc.Download();
  const std::vector<float> state_full = d_state_full.Download();
  const std::vector<float> pool = d_pool.Download();
  for (int n = 0; n < num_seqs; ++n) {
    std::vector<double> inc, one, want;
    for (int64_t t = full.cu_seqlens[n]; t < full.cu_seqlens[n + 1]; ++t) {
      for (int64_t i = 0; i < int64_t{H} * d; ++i) {
        inc.push_back(ToFloat(o_inc[t * H * d + i]));
        one.push_back(ToFloat(o_full[t * H * d + i]));
        want.push_back(ref_out[t * H * d + i]);
      }
    }
    EXPECT_LE(RelErr(inc, one), 1e-2) << "sequence " << n;
    EXPECT_LE(RelErr(inc, want), 1e-2) << "sequence " << n;
    EXPECT_LE(RelErr(one, want), 1e-2) << "sequence " << n;
    std::printf("  sequence %d: output incremental vs one prefill %.2e, vs reference %.2e; "
                "state %.2e vs reference\n",
                n, RelErr(inc, one), RelErr(inc, want),
                RelErr(std::vector<double>(pool.begin() + slots[n] * e,
                                           pool.begin() + (slots[n] + 1) * e),
                       std::vector<double>(ref_state.begin() + n * e,
                                           ref_state.begin() + (n + 1) * e)));
    std::vector<double> s_inc(pool.begin() + slots[n] * e, pool.begin() + (slots[n] + 1) * e);
    std::vector<double> s_one(state_full.begin() + n * e, state_full.begin() + (n + 1) * e);
    std::vector<double> s_ref(ref_state.begin() + n * e, ref_state.begin() + (n + 1) * e);
    EXPECT_LE(RelErr(s_inc, s_ref), 1e-5) << "sequence " << n;
    EXPECT_LE(RelErr(s_one, s_ref), 1e-5) << "sequence " << n;
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, DecodeAfterPrefillTest, ::testing::Values(64, 128));

// The training backward against the gradient written out directly, in double:
//   dq_t = sum_{s<=t} l^(t-s) (g_t.v_s) k_s,  dk_s = sum_{t>=s} l^(t-s) (v_s.g_t) q_t,
//   dv_s = sum_{t>=s} l^(t-s) (k_s.q_t) g_t.
class TrainTest : public ::testing::TestWithParam<int> {};

TEST_P(TrainTest, BackwardMatchesDirectGradient) {
  const int d = GetParam();
  const unsigned seed = FreshSeed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  const int H = 2;
  const std::vector<int32_t> lengths = {150, 3, 77};
  std::vector<int32_t> cu = {0};
  for (int32_t len : lengths) cu.push_back(cu.back() + len);
  const int64_t T = cu.back();
  const std::vector<float> slopes = RandomSlopes(H, rng);
  const size_t n = static_cast<size_t>(T) * H * d;
  std::vector<__nv_bfloat16> host(4 * n);  // q, k, v, g as [T][H][d] blocks
  std::vector<float> vals[4];
  for (int which = 0; which < 4; ++which) {
    FillStrided(host, which * n, int64_t{H} * d, d, T, H, d, 0.5f, rng, &vals[which]);
  }
  const std::vector<float>& q = vals[0];
  const std::vector<float>& k = vals[1];
  const std::vector<float>& v = vals[2];
  const std::vector<float>& g = vals[3];
  DeviceBuffer<__nv_bfloat16> d_in(host);
  DeviceBuffer<__nv_bfloat16> d_out(std::vector<__nv_bfloat16>(4 * n, FromBits(kPoisonBits)));
  DeviceBuffer<int32_t> d_cu(cu);
  DeviceBuffer<float> d_slopes(slopes);
  auto in = [&](int which) {
    return LightningInputView{d_in.get() + which * n, int64_t{H} * d, d};
  };
  auto out = [&](int which) {
    return LightningOutputView{d_out.get() + which * n, int64_t{H} * d, d};
  };
  LightningTrainParams params;
  params.cu_seqlens = d_cu.get();
  params.slopes = d_slopes.get();
  params.num_seqs = static_cast<int>(lengths.size());
  params.num_heads = H;
  params.head_dim = d;
  params.max_seqlen = 150;
  params.num_tokens = static_cast<int64_t>(n / (int64_t{H} * d));
  CUDA_CHECK(LaunchLightningTrainForward(params, in(0), in(1), in(2), out(0), nullptr));
  CUDA_CHECK(LaunchLightningTrainBackward(params, in(0), in(1), in(2), in(3), out(1), out(2),
                                          out(3), nullptr));
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<__nv_bfloat16> got = d_out.Download();

  std::vector<double> want[4];
  for (auto& w : want) w.assign(n, 0.0);
  auto dot = [&](const std::vector<float>& a, int64_t ra, const std::vector<float>& b,
                 int64_t rb) {
    double s = 0.0;
    for (int i = 0; i < d; ++i) s += static_cast<double>(a[ra + i]) * b[rb + i];
    return s;
  };
  for (size_t sq = 0; sq < lengths.size(); ++sq) {
    for (int h = 0; h < H; ++h) {
      const double lambda = std::exp(-static_cast<double>(slopes[h]));
      for (int64_t t = cu[sq]; t < cu[sq + 1]; ++t) {
        for (int64_t s = cu[sq]; s <= t; ++s) {
          const double w = std::pow(lambda, static_cast<double>(t - s));
          const int64_t rt = (t * H + h) * d;
          const int64_t rs = (s * H + h) * d;
          const double qk = w * dot(q, rt, k, rs);
          const double gv = w * dot(g, rt, v, rs);
          for (int i = 0; i < d; ++i) {
            want[0][rt + i] += qk * v[rs + i];  // o_t
            want[1][rt + i] += gv * k[rs + i];  // dq_t
            want[2][rs + i] += gv * q[rt + i];  // dk_s
            want[3][rs + i] += qk * g[rt + i];  // dv_s
          }
        }
      }
    }
  }
  const char* names[4] = {"o", "dq", "dk", "dv"};
  for (int which = 0; which < 4; ++which) {
    std::vector<double> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = ToFloat(got[which * n + i]);
    const double err = RelErr(x, want[which]);
    EXPECT_LE(err, 1e-2) << names[which];
    std::printf("  %s relative error %.2e\n", names[which], err);
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, TrainTest, ::testing::Values(64, 128));

TEST(LightningParams, ValidateRejectsBadInput) {
  LightningPrefillParams p;
  EXPECT_NE(p.Validate(), nullptr);
  LightningDecodeParams dp;
  EXPECT_NE(dp.Validate(), nullptr);
  EXPECT_EQ(LaunchLightningPrefill(p, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchLightningDecode(dp, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace lightrl
