// The layout groups made over Gloo: ranks as threads of this process join the groups of
// a layout, and a sum over each group equals the sum of the ranks GroupsOf lists.
#include <gtest/gtest.h>

#include <numeric>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rl/distributed.h"
#include "rl/parallel_layout.h"
#include "tests/test_ports.h"
#include "tests/thread_ranks.h"

namespace lightrl {
namespace {

constexpr LayoutGroup kAll[] = {LayoutGroup::kTp, LayoutGroup::kDp, LayoutGroup::kEp,
                                LayoutGroup::kExpertTp, LayoutGroup::kExpertDp};

const std::vector<int64_t>& Members(const LayoutGroups& g, LayoutGroup which) {
  switch (which) {
    case LayoutGroup::kTp: return g.tp;
    case LayoutGroup::kDp: return g.dp;
    case LayoutGroup::kEp: return g.ep;
    case LayoutGroup::kExpertTp: return g.expert_tp;
    case LayoutGroup::kExpertDp: return g.expert_dp;
  }
  return g.tp;
}

// Every rank joins `layout`'s groups, then sums (rank + 1, 1) and takes the max of the
// rank over each of its groups; both must match the members GroupsOf gives.
void RunLayout(const ParallelLayout& layout, int world) {
  RanksAreThreadsOfThisProcess();
  const int port = FreeLoopbackPort();
  std::vector<absl::StatusOr<ProcessGroupPtr>> groups(world);  // kept until all are done
  std::vector<std::string> errors(world);
  auto rank = [&](int r) {
    DistributedOptions o;
    o.rank = r;
    o.world_size = world;
    o.master_port = port;
    o.timeout_s = 60;
    groups[r] = ProcessGroup::Create(o, "cpu");
    if (!groups[r].ok()) {
      errors[r] = std::string(groups[r].status().message());
      return;
    }
    ProcessGroup& g = **groups[r];
    std::vector<double> early{1};
    absl::Status before = g.AllReduce(LayoutGroup::kTp, &early, ReduceOp::kSum);
    if (before.code() != absl::StatusCode::kFailedPrecondition) {
      errors[r] = "all-reduce before JoinLayoutGroups: " + before.ToString();
      return;
    }
    absl::Status joined = g.JoinLayoutGroups(layout);
    if (!joined.ok()) {
      errors[r] = joined.ToString();
      return;
    }
    const LayoutGroups* mine = g.layout_groups();
    for (LayoutGroup which : kAll) {
      const std::vector<int64_t>& members = Members(*mine, which);
      std::vector<double> sum{static_cast<double>(r + 1), 1};
      std::vector<double> max{static_cast<double>(r)};
      absl::Status s = g.AllReduce(which, &sum, ReduceOp::kSum);
      if (s.ok()) s = g.AllReduce(which, &max, ReduceOp::kMax);
      if (!s.ok()) {
        errors[r] = s.ToString();
        return;
      }
      double want = 0;
      for (int64_t m : members) want += static_cast<double>(m + 1);
      if (sum[0] != want || sum[1] != static_cast<double>(members.size()) ||
          max[0] != static_cast<double>(members.back())) {
        errors[r] += absl::StrCat(LayoutGroupName(which), ": sum ", sum[0], " of ", sum[1],
                                  " ranks, max ", max[0], "; want ", want, " of ",
                                  members.size(), ", max ", members.back(), "\n");
      }
    }
    // The world still works beside the groups.
    std::vector<double> all{1};
    absl::Status s = g.AllReduce(&all, ReduceOp::kSum);
    if (!s.ok() || all[0] != world) errors[r] += "world all-reduce: " + s.ToString();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(rank, r);
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

ParallelLayout Layout(int64_t tp, int64_t ep, int64_t expert_tp, int64_t dp = 0) {
  ParallelLayout l;
  l.tp = tp;
  l.ep = ep;
  l.expert_tp = expert_tp;
  l.dp = dp;
  return l;
}

TEST(LayoutGroupsGlooTest, Tp2) { RunLayout(Layout(2, 1, 1), 2); }
TEST(LayoutGroupsGlooTest, Ep2ExpertTp2) { RunLayout(Layout(1, 2, 2), 4); }
TEST(LayoutGroupsGlooTest, Tp2Dp2WithEp2) { RunLayout(Layout(2, 2, 1, 2), 4); }
TEST(LayoutGroupsGlooTest, Tp2Dp4WithEp2ExpertTp2) { RunLayout(Layout(2, 2, 2, 4), 8); }

TEST(LayoutGroupsGlooTest, LayoutThatDoesNotFitTheWorld) {
  RanksAreThreadsOfThisProcess();
  DistributedOptions o;  // one rank: no rendezvous with others
  o.master_port = FreeLoopbackPort();
  auto g = ProcessGroup::Create(o, "cpu");
  ASSERT_TRUE(g.ok()) << g.status();
  absl::Status s = (*g)->JoinLayoutGroups(Layout(2, 1, 1));
  EXPECT_EQ(s.message(), "parallel.tp (2) must divide distributed.world_size (1)");
  EXPECT_EQ((*g)->layout_groups(), nullptr);
  ASSERT_TRUE((*g)->JoinLayoutGroups(Layout(1, 1, 1)).ok());
  std::vector<double> v{3};
  ASSERT_TRUE((*g)->AllReduce(LayoutGroup::kDp, &v, ReduceOp::kSum).ok());
  EXPECT_EQ(v[0], 3);
}

}  // namespace
}  // namespace lightrl
