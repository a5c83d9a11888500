// The expert-parallel MoE block against one process: N ranks (threads of this process,
// each its own Gloo rank over loopback) each route their own tokens, and the outputs, the
// aux loss and every gradient must equal one SparseMoe forward and backward over all
// ranks' tokens laid end to end, with and without token dropping, with ranks that hold
// no tokens, and with several EP groups; the same with each rank's block holding only its
// experts (sharded), under expert-TP only its experts' FFN blocks.
#include "rl/expert_comm.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "policy/invariant_model.h"
#include "policy/minimax_model.h"
#include "rl/parallel_layout.h"
#include "tests/test_models.h"
#include "tests/test_ports.h"
#include "tests/thread_ranks.h"

namespace lightrl {
namespace {

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// FP32 sums in another order (the sparse path's per-expert index_add, by rank here):
// within 1e-5 of the reference's largest magnitude. A lost rank or a wrong weight is off
// by the order of that magnitude.
void ExpectClose(const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
  const double scale = std::max(1.0, want.abs().max().item<double>());
  EXPECT_LE(MaxDiff(got, want), 1e-5 * scale) << what << " (largest magnitude " << scale << ")";
}

// A whole MoE block of `config` with weights spread enough that routing is uneven.
SparseMoe RandomMoe(const ModelConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  SparseMoe moe(config, ShardCoords{});
  torch::NoGradGuard no_grad;
  for (auto& p : moe->parameters()) p.normal_(0, 0.3);
  return moe;
}

// Random rows xs[r] [tokens[r], H] and output gradients gs[r] of each rank.
void RandomRows(const std::vector<int64_t>& tokens, int64_t H, std::vector<torch::Tensor>* xs,
                std::vector<torch::Tensor>* gs) {
  for (int64_t n : tokens) {
    xs->push_back(torch::randn({n, H}));
    gs->push_back(torch::randn({n, H}));
  }
}

// Every rank's MoE output, aux loss and input gradient: `forward(r, x, comm)` on rank r's
// tokens xs[r] with an EP `ep` x expert-TP `expert_tp` comm, then a backward of
// (out * gs[r]).sum() + aux_coef * aux.
struct RankOutputs {
  std::vector<absl::Status> status;
  std::vector<torch::Tensor> out, aux, x_grad;
};

RankOutputs RunMoeRanks(
    const std::vector<torch::Tensor>& xs, const std::vector<torch::Tensor>& gs, double aux_coef,
    int64_t ep, int64_t expert_tp,
    const std::function<std::pair<torch::Tensor, torch::Tensor>(int64_t, const torch::Tensor&,
                                                                ExpertParallelComm&)>& forward) {
  const int64_t world = static_cast<int64_t>(xs.size());
  RankOutputs got;
  got.out.resize(world), got.aux.resize(world), got.x_grad.resize(world);
  got.status = RunThreadRanks(world, [&](int64_t r, ProcessGroup* group) {
    ProcessGroupExpertComm comm(group, ep, expert_tp);  // backward runs its collectives too
    auto x = xs[r].clone().requires_grad_(true);
    auto [out, aux] = forward(r, x, comm);
    ((out * gs[r]).sum() + aux_coef * aux).backward();
    got.out[r] = out.detach();
    got.aux[r] = aux.detach();
    got.x_grad[r] = x.grad();
  });
  return got;
}

// Each rank's output and input gradient against one process's rows of them (the outputs
// bit for bit when `bitwise`), and the ranks' aux parts summing to its aux loss.
void ExpectOneProcessRows(const std::vector<int64_t>& tokens, const RankOutputs& got,
                          const torch::Tensor& out_all, const torch::Tensor& x_all,
                          const torch::Tensor& aux_all, bool bitwise) {
  double aux_sum = 0;
  int64_t offset = 0;
  for (size_t r = 0; r < tokens.size(); ++r) {
    ASSERT_TRUE(got.status[r].ok()) << "rank " << r << ": " << got.status[r];
    const int64_t n = tokens[r];
    const std::string rank = "rank " + std::to_string(r);
    if (n > 0) {
      const torch::Tensor want = out_all.detach().narrow(0, offset, n);
      if (bitwise) {
        EXPECT_TRUE(torch::equal(got.out[r], want))
            << rank << ": largest difference " << MaxDiff(got.out[r], want);
      } else {
        ExpectClose(got.out[r], want, "output of " + rank);
      }
      ExpectClose(got.x_grad[r], x_all.grad().narrow(0, offset, n), "input gradient of " + rank);
    }
    aux_sum += got.aux[r].item<double>();
    offset += n;
  }
  EXPECT_NEAR(aux_sum, aux_all.item<double>(), 1e-5);
}

TEST(ExpertDispatchTest, CapacityCountsEarlierRanksFirst) {
  // Two ranks of 4 tokens, top-1 over 2 experts, factor 1: capacity ceil(8 / 2) = 4 per
  // expert. Expert 0: rank 0 keeps its 3, rank 1 only 1 of its 2; expert 1: all 3 kept.
  auto counts = torch::tensor({3, 1, 4, 2, 2, 4}, torch::kInt64).view({2, 3});
  ExpertDispatchPlan p = PlanExpertDispatch(counts, /*top_k=*/1, /*capacity_factor=*/1.0,
                                            /*rank=*/1, /*ep_size=*/2);
  EXPECT_EQ(p.total_tokens, 8);
  EXPECT_EQ(p.capacity, 4);
  EXPECT_EQ(p.total_counts, (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(p.prefix, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(p.kept, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(p.send, (std::vector<int64_t>{1, 2}));  // to the holders of experts 0 and 1
  EXPECT_EQ(p.recv, (std::vector<int64_t>{1, 2}));  // for expert 1: rank 0's 1, own 2
  ExpertDispatchPlan p0 = PlanExpertDispatch(counts, 1, 1.0, /*rank=*/0, 2);
  EXPECT_EQ(p0.kept, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(p0.recv, (std::vector<int64_t>{3, 1}));  // for expert 0: own 3, rank 1's 1
  // No factor: nothing is dropped.
  EXPECT_EQ(PlanExpertDispatch(counts, 1, 0, 1, 2).kept, (std::vector<int64_t>{2, 2}));
}

struct Case {
  int64_t ep;
  std::vector<int64_t> tokens;  // by rank
  double capacity_factor;
  int64_t top_k = 2;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << "expert_parallel " << c.ep << ", top-" << c.top_k << ", tokens [";
  for (size_t r = 0; r < c.tokens.size(); ++r) *os << (r ? ", " : "") << c.tokens[r];
  *os << "], capacity factor " << c.capacity_factor;
}

class ExpertParallelMoeTest : public ::testing::TestWithParam<Case> {};

TEST_P(ExpertParallelMoeTest, EqualsOneProcessOverAllTokens) {
  RanksAreThreadsOfThisProcess();
  const Case& tc = GetParam();
  const int64_t world = static_cast<int64_t>(tc.tokens.size());
  const uint64_t seed = std::random_device()();
  SCOPED_TRACE("seed " + std::to_string(seed));
  ModelConfig config = TinyLearnerConfig(4);
  config.num_experts_per_tok = tc.top_k;
  const int64_t H = config.hidden_size;
  const double aux_coef = 0.1;
  torch::set_num_threads(1);

  // Weights spread enough that routing is uneven, so a factor below 2 drops tokens.
  auto make_moe = [&] { return RandomMoe(config, seed); };
  torch::manual_seed(seed + 1);
  std::vector<torch::Tensor> xs, gs;
  RandomRows(tc.tokens, H, &xs, &gs);

  // One process over all tokens, rank by rank.
  SparseMoe ref = make_moe();
  auto x_all = torch::cat(xs).requires_grad_(true);
  auto [out_all, aux_all] = ref->forward(x_all, tc.capacity_factor);
  ((out_all * torch::cat(gs)).sum() + aux_coef * aux_all).backward();
  if (tc.capacity_factor > 0) {
    torch::NoGradGuard no_grad;
    auto undropped = ref->forward(x_all, 0).first;
    ASSERT_GT(MaxDiff(undropped, out_all), 1e-3) << "the capacity dropped nothing";
  }

  std::vector<SparseMoe> moes;
  for (int64_t r = 0; r < world; ++r) moes.push_back(make_moe());
  const RankOutputs ranks = RunMoeRanks(
      xs, gs, aux_coef, tc.ep, 1, [&](int64_t r, const torch::Tensor& x, ExpertParallelComm& comm) {
        return moes[r]->ForwardExpertParallel(x, tc.capacity_factor, comm);
      });
  ExpectOneProcessRows(tc.tokens, ranks, out_all, x_all, aux_all, /*bitwise=*/false);
  if (HasFatalFailure()) return;
  // The router is replicated: its gradient is the sum over ranks. An expert's gradient is
  // the sum over the ranks that hold it (one per EP group); other ranks leave it alone.
  auto or_zeros = [](const torch::Tensor& p) {
    return p.grad().defined() ? p.grad() : torch::zeros_like(p);
  };
  auto gate_grad = torch::zeros_like(ref->gate->weight);
  for (int64_t r = 0; r < world; ++r) gate_grad += or_zeros(moes[r]->gate->weight);
  ExpectClose(gate_grad, or_zeros(ref->gate->weight), "router gradient");
  auto weights = [](SparseMoe& moe, int64_t e) {
    auto* expert = moe->expert(e);
    return std::vector<torch::Tensor>{expert->w1->weight, expert->w2->weight, expert->w3->weight};
  };
  const int64_t per_rank = config.num_local_experts / tc.ep;
  for (int64_t e = 0; e < config.num_local_experts; ++e) {
    for (size_t w = 0; w < 3; ++w) {
      const torch::Tensor want = weights(ref, e)[w];
      auto sum = torch::zeros_like(want);
      for (int64_t r = 0; r < world; ++r) {
        const torch::Tensor got = weights(moes[r], e)[w];
        // Held experts always get a gradient (zero when no token came), as with the
        // single-process dense path; other ranks' copies none.
        const bool holds = r % tc.ep == e / per_rank;
        ASSERT_EQ(got.grad().defined(), holds) << "rank " << r << " expert " << e << " w" << w + 1;
        if (holds) sum += got.grad();
      }
      ExpectClose(sum, or_zeros(want), "expert " + std::to_string(e) + " w" + std::to_string(w + 1));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ExpertParallelMoeTest,
    ::testing::Values(
        // Two ranks, one EP group; the dense single-process path (few tokens).
        // Factors below 1 always drop some assignments.
        Case{2, {23, 17}, 0}, Case{2, {23, 17}, 0.9},
        // A rank without tokens still serves its experts.
        Case{2, {0, 31}, 0.75},
        // Two EP groups of two; four ranks of one group; the sparse path (> 1024
        // assignments in one process).
        Case{2, {19, 0, 33, 8}, 0.75}, Case{4, {40, 9, 0, 27}, 0.8},
        Case{2, {300, 250, 0, 180}, 0.9}, Case{4, {300, 250, 0, 180}, 0}));

struct ShardedCase {
  int64_t ep, expert_tp;
  std::vector<int64_t> tokens;  // by rank
  double capacity_factor;
};

void PrintTo(const ShardedCase& c, std::ostream* os) {
  *os << "ep " << c.ep << " x expert_tp " << c.expert_tp << ", tokens [";
  for (size_t r = 0; r < c.tokens.size(); ++r) *os << (r ? ", " : "") << c.tokens[r];
  *os << "], capacity factor " << c.capacity_factor;
}

class ShardedExpertMoeTest : public ::testing::TestWithParam<ShardedCase> {};

// Each rank's block holds only its experts' FFN blocks (sliced from one process's block):
// outputs, aux loss and input gradients as one process's over all tokens, router
// gradients summed over ranks, and each expert block's gradient summed over its copies
// equal to the slice of one process's gradient.
TEST_P(ShardedExpertMoeTest, EqualsOneProcessOverAllTokens) {
  RanksAreThreadsOfThisProcess();
  const ShardedCase& tc = GetParam();
  const int64_t world = static_cast<int64_t>(tc.tokens.size());
  const uint64_t seed = std::random_device()();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const ModelConfig config = TinyParallelConfig();  // 4 experts top-2, FFN 8
  const int64_t H = config.hidden_size;
  const double aux_coef = 0.1;
  torch::set_num_threads(1);

  SparseMoe ref = RandomMoe(config, seed);
  std::vector<torch::Tensor> xs, gs;
  RandomRows(tc.tokens, H, &xs, &gs);
  auto x_all = torch::cat(xs).requires_grad_(true);
  auto [out_all, aux_all] = ref->forward(x_all, tc.capacity_factor);
  ((out_all * torch::cat(gs)).sum() + aux_coef * aux_all).backward();

  ParallelLayout layout;
  layout.ep = tc.ep;
  layout.expert_tp = tc.expert_tp;
  std::vector<ShardCoords> coords;
  std::vector<SparseMoe> moes;
  auto whole = ref->named_parameters();
  for (int64_t r = 0; r < world; ++r) {
    auto groups = GroupsOf(layout, world, r);
    ASSERT_TRUE(groups.ok()) << groups.status();
    coords.push_back(ShardCoordsOf(layout, *groups));
    moes.push_back(SparseMoe(config, coords.back()));
    torch::NoGradGuard no_grad;
    for (auto& p : moes.back()->named_parameters()) {
      auto block = ShardOf("model.layers.0.block_sparse_moe." + p.key(), config, coords.back());
      ASSERT_TRUE(block.ok()) << block.status();
      torch::Tensor t = whole[p.key()];
      if (!block->whole()) t = t.narrow(block->dim, block->begin(t.size(block->dim)), block->length(t.size(block->dim)));
      p.value().copy_(t);
    }
  }

  const RankOutputs ranks = RunMoeRanks(
      xs, gs, aux_coef, tc.ep, tc.expert_tp,
      [&](int64_t r, const torch::Tensor& x, ExpertParallelComm& comm) {
        return moes[r]->ForwardExpertParallel(x, tc.capacity_factor, comm);
      });
  ExpectOneProcessRows(tc.tokens, ranks, out_all, x_all, aux_all, /*bitwise=*/false);
  if (HasFatalFailure()) return;
  // Sums over ranks by (parameter, block): the router over all, an expert block over its
  // expert-DP copies.
  std::map<std::pair<std::string, int64_t>, torch::Tensor> sums;
  for (int64_t r = 0; r < world; ++r) {
    for (auto& p : moes[r]->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << "rank " << r << " " << p.key();
      const bool expert = p.key() != "gate.weight";
      const auto key = std::make_pair(p.key(), expert ? coords[r].expert_tp_rank : 0);
      auto& sum = sums[key];
      sum = sum.defined() ? sum + p.value().grad() : p.value().grad().clone();
    }
  }
  EXPECT_EQ(sums.size(), 1 + 3 * static_cast<size_t>(config.num_local_experts * tc.expert_tp));
  for (auto& [key, sum] : sums) {
    torch::Tensor want = whole[key.first].grad();
    if (key.first != "gate.weight" && tc.expert_tp > 1) {
      const int dim = key.first.find(".w2.") != std::string::npos ? 1 : 0;
      want = want.narrow(dim, want.size(dim) / tc.expert_tp * key.second, want.size(dim) / tc.expert_tp);
    }
    ExpectClose(sum, want, key.first + " block " + std::to_string(key.second));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ShardedExpertMoeTest,
    ::testing::Values(
        // EP 2 with its experts sharded; EP 2 x expert-TP 2; expert-TP alone; EP 2 with
        // two copies; ranks without tokens; the capacity dropping assignments.
        ShardedCase{2, 1, {23, 17}, 0}, ShardedCase{2, 2, {11, 23, 0, 17}, 0},
        ShardedCase{1, 2, {13, 0}, 0.75}, ShardedCase{2, 1, {19, 0, 33, 8}, 0.75},
        ShardedCase{2, 2, {300, 250, 0, 180}, 0.9}));

// The batch-invariant mode's MoE with its experts spread over EP ranks (each holding only
// its experts, no expert-TP): every token's output is the one-process mode's bit for bit,
// wherever its experts ran and whatever tokens shared its ranks; the aux loss's parts and
// the input gradients as one process's.
class InvariantExpertParallelTest : public ::testing::TestWithParam<Case> {};

TEST_P(InvariantExpertParallelTest, TokensGetTheOneProcessBits) {
  RanksAreThreadsOfThisProcess();
  const Case& tc = GetParam();
  const int64_t world = static_cast<int64_t>(tc.tokens.size());
  const uint64_t seed = std::random_device()();
  SCOPED_TRACE("seed " + std::to_string(seed));
  ModelConfig config = TinyParallelConfig();
  config.num_experts_per_tok = tc.top_k;
  torch::set_num_threads(1);
  SparseMoe ref = RandomMoe(config, seed);
  std::vector<torch::Tensor> xs, gs;
  RandomRows(tc.tokens, config.hidden_size, &xs, &gs);
  auto x_all = torch::cat(xs).requires_grad_(true);
  auto [out_all, aux_all] = InvariantMoe(*ref, x_all, tc.capacity_factor);
  ((out_all * torch::cat(gs)).sum() + 0.1 * aux_all).backward();

  ParallelLayout layout;
  layout.ep = tc.ep;
  std::vector<SparseMoe> moes;
  auto whole = ref->named_parameters();
  for (int64_t r = 0; r < world; ++r) {
    auto groups = GroupsOf(layout, world, r);
    ASSERT_TRUE(groups.ok()) << groups.status();
    moes.push_back(SparseMoe(config, ShardCoordsOf(layout, *groups)));
    torch::NoGradGuard no_grad;
    for (auto& p : moes.back()->named_parameters()) p.value().copy_(whole[p.key()]);
  }
  const RankOutputs ranks = RunMoeRanks(
      xs, gs, 0.1, tc.ep, 1, [&](int64_t r, const torch::Tensor& x, ExpertParallelComm& comm) {
        return InvariantMoe(*moes[r], x, tc.capacity_factor, &comm);
      });
  ExpectOneProcessRows(tc.tokens, ranks, out_all, x_all, aux_all, /*bitwise=*/true);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, InvariantExpertParallelTest,
    // Top-3 of 4 experts: a token's outputs come back in another order than its slots.
    ::testing::Values(Case{2, {23, 17}, 0}, Case{2, {0, 31}, 0.75}, Case{2, {19, 0, 33, 8}, 0, 3},
                      Case{4, {40, 9, 0, 27}, 0.8, 3}, Case{2, {64, 64}, 0, 3}));

}  // namespace
}  // namespace lightrl
