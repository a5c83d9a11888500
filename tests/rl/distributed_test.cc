#include "rl/distributed.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "tests/test_ports.h"
#include "tests/thread_ranks.h"

namespace lightrl {
namespace {

TEST(DistributedOptionsTest, ValidateNamesTheField) {
  DistributedOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.world_size = 2;
  o.rank = 2;
  EXPECT_EQ(o.Validate().message(), "rank must be in [0, world_size) = [0, 2), got 2");
  o.rank = 1;
  o.backend = "mpi";
  EXPECT_EQ(o.Validate().message(), "backend must be auto, gloo or nccl, got \"mpi\"");
  o.backend = "gloo";
  o.master_port = 0;
  EXPECT_EQ(o.Validate().message(), "master_port must be in [1, 65535], got 0");
}

TEST(DistributedOptionsTest, EnvironmentOverridesTheConfig) {
  DistributedOptions base;
  base.master_addr = "from-config";
  ::setenv("RANK", "1", 1);
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("MASTER_PORT", "29999", 1);
  ::unsetenv("LOCAL_RANK");
  ::unsetenv("MASTER_ADDR");
  auto o = DistributedOptions::FromEnv(base);
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->rank, 1);
  EXPECT_EQ(o->local_rank, 1);
  EXPECT_EQ(o->world_size, 4);
  EXPECT_EQ(o->master_port, 29999);
  EXPECT_EQ(o->master_addr, "from-config");
  ::setenv("LOCAL_RANK", "0", 1);
  EXPECT_EQ(DistributedOptions::FromEnv(base)->local_rank, 0);

  ::setenv("WORLD_SIZE", "four", 1);
  EXPECT_EQ(DistributedOptions::FromEnv(base).status().message(),
            "environment variable WORLD_SIZE=\"four\" is not an integer");
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "2", 1);
  EXPECT_EQ(DistributedOptions::FromEnv(base).status().message(),
            "RANK=2 is not in [0, WORLD_SIZE) with WORLD_SIZE=2 (from the environment where set, "
            "else the config)");
  for (const char* v : {"RANK", "WORLD_SIZE", "MASTER_PORT", "LOCAL_RANK"}) ::unsetenv(v);
}

// Two ranks of one Gloo group, as two threads of this process.
TEST(ProcessGroupTest, TwoRanksBroadcastAndReduce) {
  RanksAreThreadsOfThisProcess();
  const int port = FreeLoopbackPort();
  std::string results[2];
  std::vector<double> sums[2], mins[2], maxs[2];
  absl::Status status[2];
  absl::StatusOr<ProcessGroupPtr> groups[2];  // kept until both threads are done
  auto rank = [&](int r) {
    DistributedOptions o;
    o.rank = r;
    o.world_size = 2;
    o.master_port = port;
    o.timeout_s = 60;
    auto& group = groups[r];
    group = ProcessGroup::Create(o, "cpu");
    if (!group.ok()) {
      status[r] = group.status();
      return;
    }
    EXPECT_EQ((*group)->backend(), "gloo");
    // A payload larger than one message, and an empty one.
    std::string bytes = r == 0 ? std::string(1 << 20, 'x') + "end" : "ignored";
    status[r] = (*group)->BroadcastBytes(&bytes, 0);
    std::string empty = r == 0 ? "" : "ignored";
    if (status[r].ok()) status[r] = (*group)->BroadcastBytes(&empty, 0);
    results[r] = bytes + "|" + empty;
    sums[r] = mins[r] = maxs[r] = {static_cast<double>(r), 1.5 * r - 1};
    if (status[r].ok()) status[r] = (*group)->AllReduce(&sums[r], ReduceOp::kSum);
    if (status[r].ok()) status[r] = (*group)->AllReduce(&mins[r], ReduceOp::kMin);
    if (status[r].ok()) status[r] = (*group)->AllReduce(&maxs[r], ReduceOp::kMax);
    if (status[r].ok()) status[r] = (*group)->Barrier();
  };
  std::thread t0(rank, 0), t1(rank, 1);
  t0.join();
  t1.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r];
    EXPECT_EQ(results[r], std::string(1 << 20, 'x') + "end|");
    EXPECT_EQ(sums[r], (std::vector<double>{1, -0.5}));
    EXPECT_EQ(mins[r], (std::vector<double>{0, -1}));
    EXPECT_EQ(maxs[r], (std::vector<double>{1, 0.5}));
  }
}

TEST(ProcessGroupTest, OneRankClaimedTwice) {
  RanksAreThreadsOfThisProcess();
  const int port = FreeLoopbackPort();
  absl::Status status[3];
  // Kept until every thread is done: rank 0's group serves the store.
  absl::StatusOr<ProcessGroupPtr> groups[3];
  auto rank = [&](int i) {
    DistributedOptions o;
    o.rank = i == 0 ? 0 : 1;  // two threads claim rank 1
    o.world_size = 2;
    o.master_port = port;
    o.timeout_s = 30;
    groups[i] = ProcessGroup::Create(o, "cpu");
    status[i] = groups[i].status();
  };
  std::thread t0(rank, 0), t1(rank, 1), t2(rank, 2);
  t0.join();
  t1.join();
  t2.join();
  EXPECT_TRUE(status[0].ok()) << status[0];
  // Whichever came second is told; the other joins the group.
  EXPECT_NE(status[1].ok(), status[2].ok());
  const absl::Status& failed = status[1].ok() ? status[2] : status[1];
  EXPECT_NE(failed.message().find("RANK=1 is claimed by two processes"), absl::string_view::npos)
      << failed;
}

}  // namespace
}  // namespace lightrl
