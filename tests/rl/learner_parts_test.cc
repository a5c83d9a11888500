// The learner's parts alone, on fresh random inputs: the gradient bucket plan, the ZeRO-1
// partition, the expert shard plan, the AdamW step against torch's AdamW, and the
// gradient reduction and ZeRO-1 update over real Gloo ranks (threads of this process)
// against the same arithmetic on one process.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rl/adamw.h"
#include "rl/distributed_internal.h"
#include "rl/expert_shards.h"
#include "rl/gradient_reducer.h"
#include "rl/parallel_layout.h"
#include "rl/tp_comm.h"
#include "rl/zero_optimizer.h"
#include "tests/test_ports.h"
#include "tests/thread_ranks.h"

namespace lightrl {
namespace {

std::vector<int64_t> RandomNumels(std::mt19937& rng, size_t n) {
  std::vector<int64_t> numels;
  for (size_t i = 0; i < n; ++i) numels.push_back(1 + static_cast<int64_t>(rng() % 300));
  return numels;
}

TEST(GradientBucketPlanTest, SlotsTileTheBufferInReverseOrderAndBucketsCloseAtTheirSize) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 50; ++trial) {
    const size_t n = 1 + rng() % 40;
    const auto numels = RandomNumels(rng, n);
    std::vector<char> reduced(n);
    for (auto& r : reduced) r = rng() % 5 != 0;
    const int64_t bucket_elems = 1 + static_cast<int64_t>(rng() % 700);
    const auto plan = GradientBucketPlan::Make(numels, reduced, bucket_elems);
    SCOPED_TRACE(absl::StrCat("trial ", trial, ", ", n, " parameters, buckets of ", bucket_elems));

    // Reduced parameters, last first, lie end to end from 0; the others have no slot.
    int64_t offset = 0;
    for (size_t k = n; k-- > 0;) {
      if (!reduced[k]) {
        EXPECT_EQ(plan.slots[k].bucket, -1);
        continue;
      }
      EXPECT_EQ(plan.slots[k].offset, offset);
      EXPECT_EQ(plan.slots[k].numel, numels[k]);
      offset += numels[k];
    }
    EXPECT_EQ(plan.total, offset);

    // Buckets follow each other; each holds exactly the slots inside it, ascending; all but
    // the last reach bucket_elems and would not without their last slot (lowest index).
    int64_t end = 0;
    for (size_t b = 0; b < plan.buckets.size(); ++b) {
      const auto& bucket = plan.buckets[b];
      EXPECT_EQ(bucket.begin, end);
      EXPECT_GT(bucket.end, bucket.begin);
      end = bucket.end;
      ASSERT_FALSE(bucket.params.empty());
      EXPECT_TRUE(std::is_sorted(bucket.params.begin(), bucket.params.end()));
      for (size_t k : bucket.params) {
        EXPECT_EQ(plan.slots[k].bucket, static_cast<int64_t>(b));
        EXPECT_GE(plan.slots[k].offset, bucket.begin);
        EXPECT_LE(plan.slots[k].offset + plan.slots[k].numel, bucket.end);
      }
      if (b + 1 < plan.buckets.size()) {
        EXPECT_GE(bucket.end - bucket.begin, bucket_elems);
        EXPECT_LT(bucket.end - bucket.begin - numels[bucket.params.front()], bucket_elems);
      }
    }
    EXPECT_EQ(end, plan.total);
    size_t in_buckets = 0;
    for (const auto& bucket : plan.buckets) in_buckets += bucket.params.size();
    EXPECT_EQ(in_buckets, static_cast<size_t>(std::count(reduced.begin(), reduced.end(), 1)));
  }
}

TEST(ZeroPartitionTest, ShardsCoverTheBufferOnceAndSplitEverySlot) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t world = 1 + static_cast<int64_t>(rng() % 9);
    const auto numels = RandomNumels(rng, 1 + rng() % 30);
    int64_t total = 0;
    for (int64_t n : numels) total += n;
    std::vector<int> owners(total, 0);
    std::vector<ZeroPartition> parts;
    for (int64_t r = 0; r < world; ++r) {
      parts.push_back(ZeroPartition::Of(total, world, r));
      const auto& p = parts.back();
      EXPECT_EQ(p.shard_size, (total + world - 1) / world);
      EXPECT_LE(p.end - p.begin, p.shard_size);
      for (int64_t i = p.begin; i < p.end; ++i) ++owners[i];
    }
    EXPECT_TRUE(std::all_of(owners.begin(), owners.end(), [](int c) { return c == 1; }))
        << "world " << world << ", total " << total;
    // Every slot's pieces over the ranks add up to it.
    int64_t offset = 0;
    for (int64_t numel : numels) {
      int64_t covered = 0;
      for (const auto& p : parts) {
        const auto [lo, hi] = p.Overlap(offset, numel);
        if (lo < hi) covered += hi - lo;
      }
      EXPECT_EQ(covered, numel);
      offset += numel;
    }
  }
}

TEST(ExpertShardPlanTest, ExpertsGoToTheirShardAndTheRestIsReplicated) {
  std::mt19937 rng(std::random_device{}());
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t ep = 1 + static_cast<int64_t>(rng() % 4);
    const int64_t experts = ep * (1 + static_cast<int64_t>(rng() % 3));
    const int64_t layers = 1 + static_cast<int64_t>(rng() % 3);
    std::vector<std::string> names;
    std::vector<int64_t> numels, expert_of;
    names.push_back("model.embed_tokens.weight"), numels.push_back(64), expert_of.push_back(-1);
    for (int64_t l = 0; l < layers; ++l) {
      const std::string layer = absl::StrCat("model.layers.", l, ".");
      names.push_back(layer + "block_sparse_moe.gate.weight"), numels.push_back(32), expert_of.push_back(-1);
      for (int64_t e = 0; e < experts; ++e) {
        for (const char* w : {"w1", "w2", "w3"}) {
          names.push_back(absl::StrCat(layer, "block_sparse_moe.experts.", e, ".", w, ".weight"));
          numels.push_back(l * 10 + 12);
          expert_of.push_back(e);
        }
      }
    }
    auto plan = ExpertShardPlan::Make(names, numels, experts, ep);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_EQ(plan->shard_params.size(), static_cast<size_t>(ep));
    std::vector<int> seen(names.size(), 0);
    for (int64_t q = 0; q < ep; ++q) {
      const auto& shard = plan->shard_params[q];
      EXPECT_TRUE(std::is_sorted(shard.begin(), shard.end()));
      int64_t numel = 0;
      for (size_t i : shard) {
        EXPECT_EQ(expert_of[i] / (experts / ep), q) << names[i];
        ++seen[i];
        numel += numels[i];
      }
      EXPECT_EQ(numel, plan->shard_numel);
    }
    for (size_t i = 0; i < names.size(); ++i) {
      EXPECT_EQ(plan->replicated[i], expert_of[i] < 0) << names[i];
      EXPECT_EQ(seen[i], expert_of[i] < 0 ? 0 : 1) << names[i];
    }
  }
  auto bad = ExpertShardPlan::Make({"model.layers.0.block_sparse_moe.experts.0.w1.weight"}, {4}, 3, 2);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("num_local_experts 3"), std::string::npos) << bad.status();
  auto beyond = ExpertShardPlan::Make({"model.layers.0.block_sparse_moe.experts.5.w1.weight"}, {4}, 2, 1);
  EXPECT_FALSE(beyond.ok());
  EXPECT_NE(beyond.status().message().find("experts.5"), std::string::npos) << beyond.status();
}

std::vector<torch::Tensor> RandomParams(std::mt19937& rng, size_t n, bool requires_grad = false) {
  std::vector<torch::Tensor> params;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int64_t> shape{1 + static_cast<int64_t>(rng() % 7), 1 + static_cast<int64_t>(rng() % 9)};
    params.push_back(torch::randn(shape).set_requires_grad(requires_grad));
  }
  return params;
}

OptimizerOptions RandomOptimizer(std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  OptimizerOptions o;
  o.lr = 1e-3 + 1e-2 * u(rng);
  o.beta1 = 0.8 + 0.15 * u(rng);
  o.beta2 = 0.9 + 0.09 * u(rng);
  o.eps = 1e-8;
  o.weight_decay = 0.1 * u(rng);
  return o;
}

double MaxDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

TEST(AdamWTest, FusedStepMatchesTorchAdamWAndSkipsTensorsWithoutGradients) {
  std::mt19937 rng(std::random_device{}());
  torch::manual_seed(rng());
  const OptimizerOptions o = RandomOptimizer(rng);
  auto ours = RandomParams(rng, 6);
  std::vector<torch::Tensor> theirs;
  for (auto& p : ours) theirs.push_back(p.clone().set_requires_grad(true));
  AdamW adamw(ours, o);
  auto reference = MakeTorchAdamW(theirs, o);
  for (int step = 0; step < 3; ++step) {
    const double scale = step == 1 ? 0.25 : 1.0;  // a clip factor on the second update
    std::vector<AdamW::Entry> entries;
    for (size_t i = 0; i < ours.size(); ++i) {
      // Parameter 0 never has a gradient: torch's AdamW leaves it (and its state) alone.
      auto g = i == 0 ? torch::Tensor() : torch::randn(ours[i].sizes());
      entries.push_back({ours[i], g.defined() ? g.clone() : g, {}});
      theirs[i].mutable_grad() = g.defined() ? g * scale : g;
    }
    adamw.Step(entries, o.lr, scale == 1.0 ? torch::Tensor() : torch::full({}, scale));
    reference->step();
    for (size_t i = 0; i < ours.size(); ++i) {
      EXPECT_LE(MaxDiff(ours[i], theirs[i].detach()), 1e-6) << "step " << step << ", tensor " << i;
    }
  }
  EXPECT_EQ(adamw.state().state().count(ours[0].unsafeGetTensorImpl()), 0u);
}

TEST(AdamWTest, MastersAreFp32CopiesOfLowPrecisionWeightsAndRefreshThem) {
  std::mt19937 rng(std::random_device{}());
  torch::manual_seed(rng());
  std::vector<torch::Tensor> params;
  for (auto& p : RandomParams(rng, 4)) params.push_back(p.to(torch::kBFloat16));
  MasterWeights w(params);
  ASSERT_TRUE(w.has_masters());
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(w.Updated(i).scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(w.Updated(i).to(torch::kBFloat16), params[i]));
    w.Updated(i).add_(1.0);
    torch::NoGradGuard no_grad;
    w.Refresh(i);
    EXPECT_TRUE(torch::equal(params[i], w.master(i).to(torch::kBFloat16)));
  }
  w.Drop(2);
  EXPECT_FALSE(w.has_master(2));
  EXPECT_TRUE(w.Updated(2).is_same(params[2]));
  MasterWeights fp32(RandomParams(rng, 3));
  EXPECT_FALSE(fp32.has_masters());
}

// Runs `body(rank, group)` on `world` Gloo ranks, threads of this process; false when this
// build has no Gloo.
template <typename Body>
bool RunRanks(int world, Body body) {
  const std::vector<absl::Status> status = RunThreadRanks(world, [&](int64_t r, ProcessGroup* group) {
    body(static_cast<int>(r), group);
  });
  if (absl::IsUnimplemented(status[0])) return false;
  for (int r = 0; r < world; ++r) EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
  return true;
}

// The TP comm's sequence-parallel collectives on 4 Gloo ranks (tp 2 x dp 2, and tp 4):
// all-gather joins the TP group's blocks in rank order, reduce-scatter keeps this rank's
// block of the group's sum, by the backend's own reduce-scatter.
TEST(TensorParallelCommTest, GathersAndReduceScattersOverItsTpGroup) {
  const int world = 4;
  for (int64_t tp : {2, 4}) {
    SCOPED_TRACE("tp " + std::to_string(tp));
    std::vector<torch::Tensor> local, full;
    for (int r = 0; r < world; ++r) {
      local.push_back(torch::randn({3, 5}));
      full.push_back(torch::randn({tp * 3, 5}));
    }
    ParallelLayout layout;
    layout.tp = tp;
    layout.dp = world / tp;
    std::vector<torch::Tensor> gathered(world), scattered(world);
    std::vector<char> native(world);
    const bool ran = RunRanks(world, [&](int r, ProcessGroup* group) {
      ASSERT_TRUE(group->JoinLayoutGroups(layout).ok());
      ProcessGroupTpComm comm(group);
      gathered[r] = comm.AllGather(local[r]);
      scattered[r] = comm.ReduceScatter(full[r]);
      native[r] = comm.native_reduce_scatter();
    });
    if (!ran) GTEST_SKIP() << "no Gloo in this build";
    for (int r = 0; r < world; ++r) {
      auto groups = GroupsOf(layout, world, r);
      ASSERT_TRUE(groups.ok()) << groups.status();
      std::vector<torch::Tensor> blocks;
      auto sum = torch::zeros_like(full[r]);
      for (int64_t m : groups->tp) {
        blocks.push_back(local[m]);
        sum += full[m];
      }
      EXPECT_TRUE(torch::equal(gathered[r], torch::cat(blocks))) << "rank " << r;
      auto mine = sum.narrow(0, groups->tp_rank * 3, 3);
      EXPECT_LE((scattered[r] - mine).abs().max().item<double>(), 1e-6) << "rank " << r;
      EXPECT_TRUE(native[r]) << "rank " << r << " fell back to the all-reduce";
    }
  }
}

// Every rank's gradients: gradient of parameter i on rank r, undefined where that rank
// produced none.
using Grads = std::vector<std::vector<torch::Tensor>>;

TEST(GradientReducerTest, SumsEveryRanksGradientsInBucketsFromTheHooks) {
  std::mt19937 rng(std::random_device{}());
  torch::manual_seed(rng());
  const int world = 2 + static_cast<int>(rng() % 2);
  const size_t n = 3 + rng() % 10;
  const auto shapes = RandomParams(rng, n);
  std::vector<char> reduced(n);
  for (auto& r : reduced) r = rng() % 4 != 0;
  reduced[0] = 1;
  // Parameter 1 gets a gradient on rank 0 only; the last parameter on no rank (it is not
  // reduced here, but its use is still agreed on).
  reduced[n - 1] = 0;
  Grads grads(world, std::vector<torch::Tensor>(n));
  for (int r = 0; r < world; ++r) {
    for (size_t i = 0; i < n; ++i) {
      if ((i == 1 && r != 0) || i + 1 == n) continue;
      grads[r][i] = torch::randn(shapes[i].sizes());
    }
  }
  DataParallelOptions options;
  options.bucket_mb = 4e-6;  // 1 element: a bucket per parameter
  std::vector<std::vector<torch::Tensor>> reduced_by_rank(world, std::vector<torch::Tensor>(n));
  std::vector<std::vector<char>> used_by_rank(world);
  std::vector<GradientReducer::Counts> counts(world);
  const bool ran = RunRanks(world, [&](int r, ProcessGroup* group) {
    std::vector<torch::Tensor> params;
    for (const auto& s : shapes) params.push_back(s.clone().set_requires_grad(true));
    auto reducer = GradientReducer::Create(group->impl().backend, world, params, reduced, {}, options,
                                           torch::kCPU);
    ASSERT_TRUE(reducer.ok()) << reducer.status();
    (*reducer)->InstallHooks();
    // One real backward whose gradients are grads[r]: the hooks launch the buckets.
    (*reducer)->Begin();
    (*reducer)->Arm(true);
    torch::Tensor loss = torch::zeros({});
    for (size_t i = 0; i < n; ++i) {
      if (grads[r][i].defined()) loss = loss + (params[i] * grads[r][i]).sum();
    }
    loss.backward();
    counts[r] = (*reducer)->Finish();
    for (size_t i = 0; i < n; ++i) {
      used_by_rank[r].push_back((*reducer)->used(i));
      if (reduced[i]) reduced_by_rank[r][i] = (*reducer)->grad(i).clone();
    }
  });
  if (!ran) GTEST_SKIP() << "this build has no Gloo";
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(counts[r].buckets, std::count(reduced.begin(), reduced.end(), 1));
    // Rank 0's backward produced every reduced gradient: all its buckets were launched
    // from the hooks; the others' stop before parameter 1's.
    if (r == 0) {
      EXPECT_EQ(counts[r].in_backward, counts[r].buckets);
    }
    EXPECT_LE(counts[r].in_backward, counts[r].buckets);
    for (size_t i = 0; i < n; ++i) {
      torch::Tensor want = torch::zeros(shapes[i].sizes());
      bool any = false;
      for (int q = 0; q < world; ++q) {
        if (!grads[q][i].defined()) continue;
        want += grads[q][i];
        any = true;
      }
      EXPECT_EQ(used_by_rank[r][i], any) << "rank " << r << ", parameter " << i;
      if (reduced[i]) {
        EXPECT_LE(MaxDiff(reduced_by_rank[r][i], want), 1e-5) << "rank " << r << ", parameter " << i;
      }
    }
  }
}

TEST(ZeroOptimizerTest, ShardedStepEqualsOneAdamWOnTheSummedGradients) {
  std::mt19937 rng(std::random_device{}());
  torch::manual_seed(rng());
  const int world = 2 + static_cast<int>(rng() % 2);
  const size_t n = 2 + rng() % 8;
  const auto start = RandomParams(rng, n);
  const OptimizerOptions o = RandomOptimizer(rng);
  constexpr int kSteps = 2;
  std::vector<Grads> grads(kSteps, Grads(world, std::vector<torch::Tensor>(n)));
  for (auto& step : grads) {
    for (auto& rank : step) {
      for (size_t i = 0; i < n; ++i) rank[i] = torch::randn(start[i].sizes());
    }
  }
  DataParallelOptions options;
  options.bucket_mb = 2e-4;
  std::vector<std::vector<torch::Tensor>> after(world);
  const bool ran = RunRanks(world, [&](int r, ProcessGroup* group) {
    std::vector<torch::Tensor> params;
    for (const auto& s : start) params.push_back(s.clone().set_requires_grad(true));
    auto reducer = GradientReducer::Create(group->impl().backend, world, params, std::vector<char>(n, 1), {},
                                           options, torch::kCPU);
    ASSERT_TRUE(reducer.ok()) << reducer.status();
    ZeroOptimizer zero(reducer->get(), params, group->impl().backend, r, world, o, torch::kCPU);
    for (int step = 0; step < kSteps; ++step) {
      (*reducer)->Begin();
      for (size_t i = 0; i < n; ++i) params[i].mutable_grad() = grads[step][r][i];
      (*reducer)->Finish();
      for (auto& p : params) p.mutable_grad() = torch::Tensor();
      zero.Step(o.lr, {});
    }
    after[r] = params;
  });
  if (!ran) GTEST_SKIP() << "this build has no Gloo";
  std::vector<torch::Tensor> reference;
  for (const auto& s : start) reference.push_back(s.clone().set_requires_grad(true));
  auto adamw = MakeTorchAdamW(reference, o);
  for (int step = 0; step < kSteps; ++step) {
    for (size_t i = 0; i < n; ++i) {
      torch::Tensor sum = torch::zeros(start[i].sizes());
      for (int r = 0; r < world; ++r) sum += grads[step][r][i];
      reference[i].mutable_grad() = sum;
    }
    adamw->step();
  }
  for (int r = 0; r < world; ++r) {
    for (size_t i = 0; i < n; ++i) {
      EXPECT_LE(MaxDiff(after[r][i], reference[i].detach()), 1e-5) << "rank " << r << ", parameter " << i;
      EXPECT_TRUE(torch::equal(after[r][i], after[0][i])) << "rank " << r << " differs, parameter " << i;
    }
  }
}

}  // namespace
}  // namespace lightrl
