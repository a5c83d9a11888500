// The batch-invariant mode on CUDA: every op's kernel gives the CPU op's bits on fresh
// random inputs (FP32 and bf16, odd sizes, ties, several documents, initial states), its
// gradients match, the whole model's forward on CUDA is the CPU's bit for bit, and the
// engine's logprobs equal the learner's on the GPU whatever the batch.
#include <gtest/gtest.h>

#include <array>
#include <random>
#include <string>
#include <vector>

#include "inference_engine/kv_cache.h"
#include "inference_engine/model_runner.h"
#include "policy/invariant_cuda.h"
#include "policy/invariant_model.h"
#include "policy/invariant_ops.h"
#include "policy/minimax_model.h"
#include "policy/policy_model.h"
#include "tests/rl/batch_invariant_check.h"
#include "tests/test_models.h"

namespace lightrl {
namespace {

const torch::Device kCuda("cuda");

#define REQUIRE_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

// Equal bit for bit (NaN payloads aside: none are produced here).
::testing::AssertionResult SameBits(const torch::Tensor& cuda, const torch::Tensor& cpu) {
  auto got = cuda.to(torch::kCPU);
  if (got.sizes() != cpu.sizes()) {
    return ::testing::AssertionFailure() << "sizes " << got.sizes() << " vs " << cpu.sizes();
  }
  if (got.scalar_type() != cpu.scalar_type()) {
    return ::testing::AssertionFailure() << "dtype " << got.scalar_type() << " vs " << cpu.scalar_type();
  }
  if (torch::equal(got, cpu)) return ::testing::AssertionSuccess();
  auto diff = got.to(torch::kFloat64) - cpu.to(torch::kFloat64);
  auto mismatches = (got != cpu).sum().item<int64_t>();
  return ::testing::AssertionFailure() << mismatches << " of " << got.numel()
                                       << " elements differ, max |diff| "
                                       << diff.abs().max().item<double>();
}

// The bf16 linear runs on the tensor cores: FP32 accumulation of exact products (within
// K FP32 roundings of the float64 product) and each row the same bits in any batch: alone,
// in batches of other sizes, at other offsets (other tiles), and with K not a multiple of 8
// (the unvectorised loads).
void CheckTensorCoreLinear(const torch::Tensor& x, const torch::Tensor& w) {
  const int64_t N = x.size(0), K = x.size(1);
  auto xd = x.to(kCuda), wd = w.to(kCuda);
  auto all = InvariantLinear(xd, wd, torch::kFloat32).cpu();
  auto exact = torch::matmul(x.to(torch::kFloat64), w.to(torch::kFloat64).t());
  auto bound = torch::matmul(x.to(torch::kFloat64).abs(), w.to(torch::kFloat64).abs().t()) *
               (static_cast<double>(K) * 1.2e-7) + 1e-30;
  EXPECT_TRUE(((all.to(torch::kFloat64) - exact).abs() <= bound).all().item<bool>())
      << "max |diff| " << (all.to(torch::kFloat64) - exact).abs().max().item<double>();
  for (int64_t r : {int64_t{0}, N / 2, N - 1}) {
    EXPECT_TRUE(SameBits(InvariantLinear(xd.narrow(0, r, 1), wd, torch::kFloat32), all.narrow(0, r, 1)))
        << "row " << r << " alone";
    // The row at offset 70 of a batch of 133 (another tile, another row within it).
    auto padded = torch::cat({torch::randn({70, K}).to(x.scalar_type()).to(kCuda), xd.narrow(0, r, 1),
                              torch::randn({62, K}).to(x.scalar_type()).to(kCuda)});
    EXPECT_TRUE(SameBits(InvariantLinear(padded, wd, torch::kFloat32).narrow(0, 70, 1), all.narrow(0, r, 1)))
        << "row " << r << " at offset 70";
  }
  EXPECT_TRUE(SameBits(InvariantLinear(xd, wd), all.to(x.scalar_type())));
}

class InvariantCudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    torch::manual_seed(seed_);
  }
  uint64_t seed_ = 0;
};

TEST_F(InvariantCudaOpsTest, LinearNormsAndActivationsGiveTheCpuBits) {
  REQUIRE_CUDA();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(std::string(c10::toString(dtype)));
    for (auto [N, K, M] : std::vector<std::array<int64_t, 3>>{
             {1, 64, 96}, {67, 131, 75}, {130, 17, 200}, {9, 1024, 333}}) {
      auto x = torch::randn({N, K}).to(dtype), w = torch::randn({M, K}).to(dtype);
      if (dtype == torch::kFloat32) {
        EXPECT_TRUE(SameBits(InvariantLinear(x.to(kCuda), w.to(kCuda)), InvariantLinear(x, w)));
        EXPECT_TRUE(SameBits(InvariantLinear(x.to(kCuda), w.to(kCuda), torch::kFloat32),
                             InvariantLinear(x, w, torch::kFloat32)));
      } else {
        CheckTensorCoreLinear(x, w);
      }
      auto norm_w = (torch::rand({K}) + 0.5).to(dtype);
      EXPECT_TRUE(SameBits(InvariantRmsNorm(x.to(kCuda), norm_w.to(kCuda), 1e-6),
                           InvariantRmsNorm(x, norm_w, 1e-6)));
      auto wide = (torch::randn({N, K}) * 12).to(dtype);  // exp's whole range, overflow too
      EXPECT_TRUE(SameBits(InvariantSilu(wide.to(kCuda)), InvariantSilu(wide)));
      EXPECT_TRUE(SameBits(InvariantSigmoid(wide.to(kCuda)), InvariantSigmoid(wide)));
      // Inputs that need gradients take the autograd path (separate ops), the others one
      // fused kernel: the same bits.
      auto xg = x.to(kCuda).requires_grad_(), wg = wide.to(kCuda).requires_grad_();
      EXPECT_TRUE(SameBits(InvariantRmsNorm(xg, norm_w.to(kCuda), 1e-6).detach(),
                           InvariantRmsNorm(x, norm_w, 1e-6)));
      EXPECT_TRUE(SameBits(InvariantSilu(wg).detach(), InvariantSilu(wide)));
      EXPECT_TRUE(SameBits(InvariantSigmoid(wg).detach(), InvariantSigmoid(wide)));
    }
  }
  auto logits = torch::randn({50, 33}) * 4;
  auto probs = InvariantSoftmax(logits);
  EXPECT_TRUE(SameBits(InvariantSoftmax(logits.to(kCuda)), probs));
  // Top-k with ties: values on a coarse grid, so rows hold equal entries.
  auto tied = (torch::randn({64, 32}) * 2).round() / 2;
  for (int64_t k : {1, 2, 8}) EXPECT_TRUE(SameBits(InvariantTopK(tied.to(kCuda), k), InvariantTopK(tied, k)));
  auto positions = torch::randint(0, 80000, {40}, torch::kInt64);
  auto [cos, sin] = InvariantRopeTables(positions, 64, 10000.0);
  auto [cos_d, sin_d] = InvariantRopeTables(positions.to(kCuda), 64, 10000.0);
  EXPECT_TRUE(cos_d.is_cuda());
  EXPECT_TRUE(SameBits(cos_d, cos));
  EXPECT_TRUE(SameBits(sin_d, sin));
}

// The experts' linears in one launch against each group through InvariantLinear: groups of
// 0, 1, 64 and 130 rows (tiles that end mid-group and groups that share none).
TEST_F(InvariantCudaOpsTest, GroupedLinearGivesEachGroupsBits) {
  REQUIRE_CUDA();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  const std::vector<int64_t> sizes = {3, 0, 64, 1, 130, 17};
  std::vector<int64_t> offsets = {0};
  std::vector<torch::Tensor> weights;
  for (int64_t n : sizes) {
    offsets.push_back(offsets.back() + n);
    weights.push_back(torch::randn({96, 136}).to(torch::kBFloat16).to(kCuda));
  }
  auto x = torch::randn({offsets.back(), 136}).to(torch::kBFloat16).to(kCuda);
  torch::Tensor grouped;
  {
    torch::NoGradGuard no_grad;
    grouped = InvariantGroupedLinear(x, weights, offsets);
  }
  ASSERT_EQ(grouped.sizes(), (std::vector<int64_t>{offsets.back(), 96}));
  for (size_t g = 0; g < sizes.size(); ++g) {
    if (sizes[g] == 0) continue;
    auto alone = InvariantLinear(x.narrow(0, offsets[g], sizes[g]), weights[g]);
    EXPECT_TRUE(SameBits(grouped.narrow(0, offsets[g], sizes[g]), alone.cpu())) << "group " << g;
  }
  // Under autograd (the learner's training forward) the same one launch and bits, and the
  // gradients of x and of every weight the groups' products' (float64 reference; the
  // backward rounds its bf16 result once).
  auto xg = x.clone().requires_grad_();
  std::vector<torch::Tensor> wg;
  for (const auto& w : weights) wg.push_back(w.clone().requires_grad_());
  auto with_grad = InvariantGroupedLinear(xg, wg, offsets);
  EXPECT_TRUE(SameBits(with_grad.detach(), grouped.cpu()));
  auto up = torch::randn({offsets.back(), 96});
  (with_grad.to(torch::kFloat32) * up.to(kCuda)).sum().backward();
  auto g64 = up.to(torch::kBFloat16).to(torch::kFloat64);
  auto x64 = x.cpu().to(torch::kFloat64);
  auto near = [](const torch::Tensor& got, const torch::Tensor& want, const torch::Tensor& scale) {
    auto err = (got.cpu().to(torch::kFloat64) - want).abs();
    return ::testing::AssertionResult((err <= scale * 1e-2 + 1e-6).all().item<bool>())
           << "max |diff| " << err.max().item<double>();
  };
  ASSERT_TRUE(xg.grad().defined());
  for (size_t g = 0; g < sizes.size(); ++g) {
    auto rows = g64.narrow(0, offsets[g], sizes[g]);
    auto xs = x64.narrow(0, offsets[g], sizes[g]);
    auto w64 = weights[g].cpu().to(torch::kFloat64);
    ASSERT_TRUE(wg[g].grad().defined()) << "group " << g;
    EXPECT_TRUE(near(wg[g].grad(), rows.t().mm(xs), rows.abs().t().mm(xs.abs()))) << "dW group " << g;
    if (sizes[g] == 0) continue;
    EXPECT_TRUE(near(xg.grad().narrow(0, offsets[g], sizes[g]), rows.mm(w64),
                     rows.abs().mm(w64.abs())))
        << "dx group " << g;
  }
}

// The MoE dispatch on the device against a stable sort on the host: experts drawn unevenly
// (one expert takes most), with and without a capacity.
TEST_F(InvariantCudaOpsTest, DeviceDispatchIsTheHostsStableSort) {
  REQUIRE_CUDA();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::mt19937 rng(seed_);
  for (int64_t A : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{600}, int64_t{5000}}) {
    for (int64_t E : {int64_t{1}, int64_t{8}, int64_t{33}}) {
      for (int64_t capacity : {int64_t{-1}, int64_t{0}, int64_t{3}, A / 4}) {
        SCOPED_TRACE("A " + std::to_string(A) + " E " + std::to_string(E) + " capacity " +
                     std::to_string(capacity));
        std::vector<int64_t> expert(A);
        for (auto& e : expert) e = rng() % 3 == 0 ? 0 : static_cast<int64_t>(rng() % E);
        auto d = invariant_cuda::Dispatch(torch::tensor(expert, torch::kInt64).to(kCuda), E, capacity);
        std::vector<int64_t> order, offsets = {0}, position(A);
        std::vector<float> kept(A);
        for (int64_t e = 0; e < E; ++e) {
          int64_t rank = 0;
          for (int64_t a = 0; a < A; ++a) {
            if (expert[a] != e) continue;
            position[a] = static_cast<int64_t>(order.size());
            kept[a] = capacity < 0 || rank < capacity ? 1.0f : 0.0f;
            order.push_back(a);
            ++rank;
          }
          offsets.push_back(static_cast<int64_t>(order.size()));
        }
        EXPECT_TRUE(torch::equal(d.order.cpu(), torch::tensor(order, torch::kInt64).view({A})));
        EXPECT_TRUE(torch::equal(d.position.cpu(), torch::tensor(position, torch::kInt64).view({A})));
        EXPECT_TRUE(torch::equal(d.offsets.cpu(), torch::tensor(offsets, torch::kInt64)));
        EXPECT_TRUE(torch::equal(d.kept.cpu(), torch::tensor(kept, torch::kFloat32).view({A})));
      }
    }
  }
}

// The MoE block's sorted dispatch (on the device, outside autograd) against the per-expert
// path (the same block under autograd).
TEST_F(InvariantCudaOpsTest, SortedMoeGivesThePerExpertBits) {
  REQUIRE_CUDA();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  batch_invariant_check::CheckSortedMoe(kCuda, torch::kBFloat16);
}

TEST_F(InvariantCudaOpsTest, LightningStepAndPageTableAttentionGiveTheCpuBits) {
  REQUIRE_CUDA();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::mt19937 rng(seed_);
  // One token per row from its slot's state, written back in place.
  for (int64_t d : {16, 128}) {
    const int64_t B = 5, H = 3, S = 9;
    auto q = torch::randn({B, H, d}) * 0.3, k = torch::randn({B, H, d}) * 0.3;
    auto v = torch::randn({B, H, d});
    auto slope = torch::rand({H}) * 0.5;
    auto states = torch::randn({S, H, d, d});
    auto slots = torch::tensor(std::vector<int64_t>{4, 0, 8, 2, 5});
    auto states_d = states.to(kCuda);
    auto o_d = InvariantLightningStep(q.to(kCuda), k.to(kCuda), v.to(kCuda), slope.to(kCuda),
                                      states_d, slots.to(kCuda));
    torch::Tensor last;
    auto o = InvariantLightning(q, k, v, slope, {0, 1, 2, 3, 4, 5}, states.index_select(0, slots), &last);
    EXPECT_TRUE(SameBits(o_d, o)) << "head_dim " << d;
    auto expected = states.index_copy(0, slots, last);
    EXPECT_TRUE(SameBits(states_d, expected)) << "head_dim " << d;
    auto states_c = states.clone();
    EXPECT_TRUE(SameBits(InvariantLightningStep(q, k, v, slope, states_c, slots).to(kCuda), o));
    EXPECT_TRUE(torch::equal(states_c, expected));
  }
  // Keys through a page table, pools in FP32 and bf16, queries of 1 .. 300 keys.
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    const int64_t page_size = 16, pages = 40, max_pages = 20, KVH = 2, H = 4, d = 32, Q = 5;
    auto kp = torch::randn({pages * page_size, KVH, d}).to(dtype);
    auto vp = torch::randn({pages * page_size, KVH, d}).to(dtype);
    auto table = torch::randint(0, pages, {7, max_pages}, torch::kInt32);
    auto q = torch::randn({Q, H, d}).to(dtype);
    std::vector<int64_t> row(Q), count(Q);
    std::vector<std::vector<int64_t>> keys(Q);
    for (int64_t i = 0; i < Q; ++i) {
      row[i] = static_cast<int64_t>(rng() % 7);
      count[i] = i == 0 ? 1 : 1 + static_cast<int64_t>(rng() % 300);
      for (int64_t j = 0; j < count[i]; ++j) {
        keys[i].push_back(table[row[i]][j / page_size].item<int64_t>() * page_size + j % page_size);
      }
    }
    const double scale = 0.2;
    auto rows_t = torch::tensor(row, torch::kInt64), count_t = torch::tensor(count, torch::kInt64);
    auto expected = InvariantPagedAttention(q, kp, vp, keys, scale);
    EXPECT_TRUE(SameBits(InvariantPagedAttention(q.to(kCuda), kp.to(kCuda), vp.to(kCuda),
                                                 table.to(kCuda), rows_t.to(kCuda),
                                                 count_t.to(kCuda), page_size, scale),
                         expected))
        << c10::toString(dtype);
    EXPECT_TRUE(torch::equal(
        InvariantPagedAttention(q, kp, vp, table, rows_t, count_t, page_size, scale), expected));
  }
}

TEST_F(InvariantCudaOpsTest, LightningGivesTheCpuBitsWithAndWithoutInitialStates) {
  REQUIRE_CUDA();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  for (int64_t d : {16, 64, 128}) {
    SCOPED_TRACE("head_dim " + std::to_string(d));
    const std::vector<int64_t> cu = {0, 5, 5, 38, 39};  // an empty document, a one-token one
    const int64_t T = cu.back(), H = 3, N = static_cast<int64_t>(cu.size()) - 1;
    auto q = torch::randn({T, H, d}) * 0.3, k = torch::randn({T, H, d}) * 0.3;
    auto v = torch::randn({T, H, d});
    auto slope = torch::rand({H}) * 0.5;
    auto init = torch::randn({N, H, d, d});
    for (bool with_init : {false, true}) {
      torch::Tensor last, last_d;
      auto o = InvariantLightning(q, k, v, slope, cu, with_init ? init : torch::Tensor(), &last);
      auto o_d = InvariantLightning(q.to(kCuda), k.to(kCuda), v.to(kCuda), slope.to(kCuda), cu,
                                    with_init ? init.to(kCuda) : torch::Tensor(), &last_d);
      EXPECT_TRUE(SameBits(o_d, o)) << "init " << with_init;
      EXPECT_TRUE(SameBits(last_d, last)) << "init " << with_init;
    }
    // The backward: the same recurrence, so the same gradients (to rounding at most).
    auto qc = q.clone().requires_grad_(), kc = k.clone().requires_grad_(), vc = v.clone().requires_grad_();
    auto qg = q.to(kCuda).requires_grad_(), kg = k.to(kCuda).requires_grad_(), vg = v.to(kCuda).requires_grad_();
    auto weight = torch::randn({T, H, d});
    auto gc = torch::autograd::grad({(InvariantLightning(qc, kc, vc, slope, cu) * weight).sum()}, {qc, kc, vc});
    auto gg = torch::autograd::grad(
        {(InvariantLightning(qg, kg, vg, slope.to(kCuda), cu) * weight.to(kCuda)).sum()}, {qg, kg, vg});
    for (int i = 0; i < 3; ++i) {
      const double scale = std::max(1.0, gc[i].abs().max().item<double>());
      EXPECT_LT((gg[i].cpu() - gc[i]).abs().max().item<double>(), 1e-5 * scale) << "input " << i;
    }
  }
}

TEST_F(InvariantCudaOpsTest, AttentionPagedAttentionAndLogprobsGiveTheCpuBits) {
  REQUIRE_CUDA();
  SCOPED_TRACE("seed " + std::to_string(seed_));
  std::mt19937 rng(seed_);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(std::string(c10::toString(dtype)));
    for (int64_t d : {32, 128}) {
      // Documents longer than a kernel chunk (128 keys), grouped heads.
      const std::vector<int64_t> cu = {0, 3, 300, 301, 340};
      const int64_t T = cu.back(), H = 4, KVH = 2;
      auto q = torch::randn({T, H, d}).to(dtype), k = torch::randn({T, KVH, d}).to(dtype);
      auto v = torch::randn({T, KVH, d}).to(dtype);
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));
      EXPECT_TRUE(SameBits(InvariantAttention(q.to(kCuda), k.to(kCuda), v.to(kCuda), cu, scale),
                           InvariantAttention(q, k, v, cu, scale)));
      // Paged: each query its own scattered rows of a pool.
      const int64_t R = 500, Q = 6;
      auto kp = torch::randn({R, KVH, d}).to(dtype), vp = torch::randn({R, KVH, d}).to(dtype);
      auto qp = torch::randn({Q, H, d}).to(dtype);
      std::vector<std::vector<int64_t>> rows(Q);
      for (int64_t i = 0; i < Q; ++i) {
        const int64_t n = 1 + static_cast<int64_t>(rng() % 300);
        for (int64_t j = 0; j < n; ++j) rows[i].push_back(static_cast<int64_t>(rng() % R));
      }
      EXPECT_TRUE(SameBits(InvariantPagedAttention(qp.to(kCuda), kp.to(kCuda), vp.to(kCuda), rows, scale),
                           InvariantPagedAttention(qp, kp, vp, rows, scale)));
    }
  }
  for (int64_t V : {7, 1000, 32003}) {
    auto logits = torch::randn({9, V}) * 3;
    auto targets = torch::randint(0, V, {9}, torch::kInt64);
    std::vector<double> temps = {1.0, 0.7, 1.3, 0.05, 1.0, 2.0, 0.9, 1.0, 0.5};
    EXPECT_TRUE(SameBits(InvariantTokenLogprobs(logits.to(kCuda), targets.to(kCuda), temps),
                         InvariantTokenLogprobs(logits, targets, temps)));
    EXPECT_TRUE(SameBits(InvariantTokenLogprobs(logits.to(kCuda), targets, {0.8}),
                         InvariantTokenLogprobs(logits, targets, {0.8})));
    // A target outside the vocabulary: NaN for its row on CUDA (checked without a sync),
    // the other rows unchanged.
    auto bad = targets.clone();
    bad[3] = V;
    auto with_bad = InvariantTokenLogprobs(logits.to(kCuda), bad.to(kCuda), temps).cpu();
    EXPECT_TRUE(std::isnan(with_bad[3].item<float>()));
    EXPECT_TRUE(SameBits(with_bad.narrow(0, 0, 3), InvariantTokenLogprobs(logits, targets, temps).narrow(0, 0, 3)));
    // Against float64 log-softmax: a few ulps of the row's magnitude.
    auto exact = torch::log_softmax(logits.to(torch::kFloat64) / 0.8, -1).gather(1, targets.unsqueeze(1)).squeeze(1);
    EXPECT_LT((InvariantTokenLogprobs(logits, targets, {0.8}).to(torch::kFloat64) - exact).abs().max().item<double>(),
              1e-4);
  }
  // The attention backward on CUDA (recomputed through torch ops) against the CPU's loops.
  const std::vector<int64_t> cu = {0, 4, 19};
  auto q = torch::randn({19, 4, 16}), k = torch::randn({19, 2, 16}), v = torch::randn({19, 2, 16});
  auto weight = torch::randn({19, 4, 16});
  auto qc = q.clone().requires_grad_(), kc = k.clone().requires_grad_(), vc = v.clone().requires_grad_();
  auto qg = q.to(kCuda).requires_grad_(), kg = k.to(kCuda).requires_grad_(), vg = v.to(kCuda).requires_grad_();
  auto gc = torch::autograd::grad({(InvariantAttention(qc, kc, vc, cu, 0.25) * weight).sum()}, {qc, kc, vc});
  auto gg = torch::autograd::grad({(InvariantAttention(qg, kg, vg, cu, 0.25) * weight.to(kCuda)).sum()},
                                  {qg, kg, vg});
  for (int i = 0; i < 3; ++i) {
    EXPECT_LT((gg[i].cpu() - gc[i]).abs().max().item<double>(), 1e-5 * std::max(1.0, gc[i].abs().max().item<double>()))
        << "input " << i;
  }
}

// The whole model in the mode: in FP32 the CUDA forward's hidden states and logprobs are
// the CPU's; in bf16 (tensor-core linears) each document's are the same bits alone and
// packed with others.
TEST(InvariantCudaModelTest, ForwardOnCudaGivesTheCpuBitsInFp32AndIsBatchInvariantInBf16) {
  REQUIRE_CUDA();
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  {
    PolicyOptions opts;
    opts.dtype = "bfloat16";
    opts.device = "cuda";
    auto gpu = PolicyModel::Create(TinyRolloutConfig(64), seed, opts);
    ASSERT_TRUE(gpu.ok());
    const std::vector<int64_t> lengths = {7, 30, 1, 12};
    const PackedLayout layout = PackedLayout::FromLengths(lengths);
    torch::manual_seed(seed);
    auto tokens = torch::randint(0, 61, {layout.num_tokens()}, torch::kInt64).to(kCuda);
    ForwardOptions fopts;
    fopts.batch_invariant = true;
    torch::NoGradGuard no_grad;
    auto packed = (*gpu)->module()->Forward(tokens, layout, fopts).hidden;
    for (size_t d = 0; d < lengths.size(); ++d) {
      const int64_t b = layout.cu_seqlens[d];
      auto alone = (*gpu)->module()->Forward(tokens.narrow(0, b, lengths[d]),
                                            PackedLayout::FromLengths({lengths[d]}), fopts).hidden;
      EXPECT_TRUE(SameBits(alone, packed.narrow(0, b, lengths[d]).cpu())) << "document " << d;
    }
  }
  for (const std::string dtype : {"float32"}) {
    SCOPED_TRACE(dtype);
    PolicyOptions cpu_opts, cuda_opts;
    cpu_opts.dtype = cuda_opts.dtype = dtype;
    cuda_opts.device = "cuda";
    auto cpu = PolicyModel::Create(TinyRolloutConfig(64), seed, cpu_opts);
    auto gpu = PolicyModel::Create(TinyRolloutConfig(64), seed + 1, cuda_opts);
    ASSERT_TRUE(cpu.ok() && gpu.ok());
    auto weights = (*cpu)->ExportWeights(DType::kF32);
    ASSERT_TRUE(weights.ok());
    ASSERT_TRUE((*gpu)->ImportWeights(DType::kF32, *weights).ok());
    const PackedLayout layout = PackedLayout::FromLengths({7, 30, 1, 12});
    torch::manual_seed(seed);
    auto tokens = torch::randint(0, 61, {layout.num_tokens()}, torch::kInt64);
    auto targets = torch::randint(0, 61, {layout.num_tokens()}, torch::kInt64);
    ForwardOptions fopts;
    fopts.batch_invariant = true;
    torch::NoGradGuard no_grad;
    auto h_cpu = (*cpu)->module()->Forward(tokens, layout, fopts).hidden;
    auto h_gpu = (*gpu)->module()->Forward(tokens.to(kCuda), layout, fopts).hidden;
    EXPECT_TRUE(SameBits(h_gpu, h_cpu));
    EXPECT_TRUE(SameBits(InvariantLmHeadLogprobs(*(*gpu)->module(), h_gpu, targets, 0.9),
                         InvariantLmHeadLogprobs(*(*cpu)->module(), h_cpu, targets, 0.9)));
  }
}

// The mode's decode step on CUDA replayed from graphs: each step's logits are the eager
// step's bits and the learner's forward of the whole sequence alone (ragged prompts in
// shuffled slots, a batch that shrinks into another bucket, padded rows).
TEST(InvariantCudaRunnerTest, GraphedDecodeGivesTheLearnersBits) {
  REQUIRE_CUDA();
  std::mt19937 rng(std::random_device{}());
  const uint64_t seed = rng();
  SCOPED_TRACE("seed " + std::to_string(seed));
  PolicyOptions opts;
  opts.dtype = "bfloat16";
  opts.device = "cuda";
  const ModelConfig config = TinyRolloutConfig(256);
  auto policy = PolicyModel::Create(config, seed, opts);
  ASSERT_TRUE(policy.ok());
  auto& module = (*policy)->module();
  ModelRunnerOptions ro;
  ro.num_slots = 8;
  ro.num_pages = 128;
  ro.page_size = 4;
  ro.batch_invariant = true;
  ModelRunner graphed(module, ro);
  ModelRunnerOptions eager_options = ro;
  eager_options.cuda_graphs = false;
  ModelRunner eager(module, eager_options);
  ASSERT_TRUE(graphed.uses_cuda_graphs());
  ASSERT_FALSE(eager.uses_cuda_graphs());
  const std::vector<int> lengths = {1, 9, 30, 2, 17, 5};
  const std::vector<int64_t> slots = {5, 0, 7, 2, 6, 1};
  PagedKvCache kv(ro.num_pages, ro.page_size);
  const int kSteps = 6;
  std::vector<PageTable> tables(lengths.size());
  std::vector<RunnerSequence> seqs(lengths.size());
  std::vector<std::vector<int64_t>> history(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    ASSERT_TRUE(kv.Reserve(tables[i], lengths[i] + kSteps));
    seqs[i].slot = slots[i];
    seqs[i].pages = &tables[i];
    for (int t = 0; t < lengths[i]; ++t) seqs[i].tokens.push_back(static_cast<int32_t>(rng() % 61));
    history[i].assign(seqs[i].tokens.begin(), seqs[i].tokens.end());
  }
  auto learner_logits = [&](size_t i) {
    torch::NoGradGuard no_grad;
    ForwardOptions fopts;
    fopts.batch_invariant = true;
    const int64_t n = static_cast<int64_t>(history[i].size());
    auto hidden = module->Forward(torch::tensor(history[i]).to(kCuda), PackedLayout::FromLengths({n}),
                                  fopts).hidden;
    return InvariantLogits(*module, hidden.narrow(0, n - 1, 1)).cpu();
  };
  auto prefill = graphed.Prefill(seqs).cpu();
  EXPECT_TRUE(SameBits(eager.Prefill(seqs), prefill));
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_TRUE(SameBits(learner_logits(i).to(kCuda), prefill.narrow(0, i, 1))) << "prefill " << i;
  }
  for (int step = 0; step < kSteps; ++step) {
    if (step == kSteps / 2) seqs.resize(3);  // another bucket, with padding rows
    for (size_t i = 0; i < seqs.size(); ++i) {
      seqs[i].position = lengths[i] + step;
      seqs[i].tokens = {static_cast<int32_t>(rng() % 61)};
      history[i].push_back(seqs[i].tokens[0]);
    }
    auto replayed = graphed.Decode(seqs).cpu();
    EXPECT_TRUE(SameBits(eager.Decode(seqs), replayed)) << "step " << step;
    for (size_t i = 0; i < seqs.size(); ++i) {
      EXPECT_TRUE(SameBits(learner_logits(i).to(kCuda), replayed.narrow(0, i, 1)))
          << "step " << step << " sequence " << i;
    }
  }
  EXPECT_EQ(graphed.num_cuda_graphs(), 2);  // buckets of 8 and 4
}

TEST(InvariantCudaEngineTest, EngineAndLearnerLogprobsAreEqualBf16Sampled) {
  REQUIRE_CUDA();
  batch_invariant_check::CheckZeroMismatch(TinyRolloutConfig(64), "bfloat16", 0.8, "cuda");
}

TEST(InvariantCudaEngineTest, EngineAndLearnerLogprobsAreEqualFp32Greedy) {
  REQUIRE_CUDA();
  batch_invariant_check::CheckZeroMismatch(TinyRolloutConfig(64), "float32", 0.0, "cuda");
}

TEST(InvariantCudaEngineTest, EngineAndLearnerLogprobsAreEqualTopOneLearnerModel) {
  REQUIRE_CUDA();
  batch_invariant_check::CheckZeroMismatch(TinyLearnerConfig(2), "bfloat16", 1.0, "cuda");
}

}  // namespace
}  // namespace lightrl
